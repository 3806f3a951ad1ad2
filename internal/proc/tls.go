package proc

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/leasehold/leasehold/internal/pki"
)

// AdminName is the name of the operator certificate a Cluster's own
// connections present (operator-admin.pem in its Certs' directory): the one
// `leasehold cluster` names on its "tls:" line.
const AdminName = "admin"

// TLSFiles are the PEM files of one certificate, its key and the CA bundle
// that verifies peers.
type TLSFiles struct {
	CA, Cert, Key string
}

// ServeArgs returns serve's flags for f: --tls-ca, --tls-cert and --tls-key.
func (f TLSFiles) ServeArgs() []string {
	return []string{"--tls-ca", f.CA, "--tls-cert", f.Cert, "--tls-key", f.Key}
}

// DialOption returns gRPC transport credentials that present f's
// certificate and accept a server only if it holds a node certificate of
// f's CA naming the host dialed. The files are read now and again whenever
// they change (pki.Source), so new connections follow a rotation.
func (f TLSFiles) DialOption() (grpc.DialOption, error) {
	src, err := pki.NewSource(f.Cert, f.Key, f.CA, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(src.ClientConfig(true, pki.RequireRole(pki.RoleNode)))), nil
}

// ErrNoTransportSecurity is the error of Dial, Security.DialOption and
// NewCluster when the caller chose neither TLS nor plain text: the
// harness, like the SDK (client.Dial without WithTLS or WithInsecure),
// never falls back to plain text.
var ErrNoTransportSecurity = errors.New("proc: no transport security chosen: give TLS files, or Insecure for nodes serving plain text (serve --insecure)")

// Security is how the harness's connections to a cluster's client API are
// secured: TLS, presenting a certificate and checking that the server
// holds a node certificate of the same CA, or plain text, which only nodes
// started with --insecure speak. Exactly one must be chosen; the zero
// value is refused (ErrNoTransportSecurity). A Cluster's own is
// Cluster.Security.
type Security struct {
	// TLS is the certificate the connections present, its key and the CA
	// that verifies the nodes; nil for plain text.
	TLS *TLSFiles
	// Insecure makes the connections speak plain text, for nodes started
	// with --insecure (Layout.Insecure). It excludes TLS.
	Insecure bool
}

// Plaintext is the Security of a cluster started insecure.
var Plaintext = Security{Insecure: true}

// String returns "plain text" or "TLS as <certificate file>".
func (s Security) String() string {
	switch {
	case s.TLS != nil && !s.Insecure:
		return "TLS as " + s.TLS.Cert
	case s.Insecure && s.TLS == nil:
		return "plain text"
	}
	return "no transport security"
}

// DialOption returns the gRPC transport credentials of s: s.TLS's
// (TLSFiles.DialOption), or plain text if s.Insecure. It fails with
// ErrNoTransportSecurity if s chooses neither, and with another error if it
// chooses both.
func (s Security) DialOption() (grpc.DialOption, error) {
	switch {
	case s.TLS != nil && s.Insecure:
		return nil, fmt.Errorf("proc: TLS files (%s) and Insecure exclude each other", s.TLS.Cert)
	case s.TLS != nil:
		return s.TLS.DialOption()
	case s.Insecure:
		return grpc.WithTransportCredentials(insecure.NewCredentials()), nil
	}
	return nil, ErrNoTransportSecurity
}

// Certs is a local cluster's certificate authority and the certificates it
// issued: PEM files in one directory, named as `leasehold certs` names them
// (pki.CAFiles, pki.CertFiles), keys with mode 0600. A certificate is issued
// only when its files are absent, so a directory made once serves every
// later run, and one rewritten by `leasehold certs --force` (a rotation) is
// kept as it is. It is safe for concurrent use within one process; two
// processes issuing into one directory at once are not supported.
type Certs struct {
	dir string
	ca  *pki.CA
	mu  sync.Mutex // serializes Ensure's look-then-write
}

// OpenCerts returns the certificates in dir. It loads the CA there or, if
// dir holds neither ca.pem nor ca-key.pem, makes dir (mode 0700) and a new
// CA valid for pki.DefaultCALifetime. One of the two files without the
// other is an error naming it.
func OpenCerts(dir string) (*Certs, error) {
	if dir == "" {
		return nil, errors.New("certs: empty directory")
	}
	certFile, keyFile := pki.CAFiles(dir)
	switch n, err := present(certFile, keyFile); {
	case err != nil:
		return nil, err
	case n == 2:
		ca, err := pki.LoadCA(certFile, keyFile)
		if err != nil {
			return nil, err
		}
		return &Certs{dir: dir, ca: ca}, nil
	case n == 1:
		return nil, fmt.Errorf("certs: %s and %s go together; one is missing (remove the other to make a new CA)", certFile, keyFile)
	}
	ca, err := pki.NewCA("Leasehold local CA", pki.DefaultCALifetime)
	if err != nil {
		return nil, err
	}
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	if err := pki.WriteKeyPair(certFile, ca.CertPEM(), keyFile, keyPEM); err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	return &Certs{dir: dir, ca: ca}, nil
}

// present returns how many of files exist.
func present(files ...string) (int, error) {
	n := 0
	for _, f := range files {
		_, err := os.Stat(f)
		switch {
		case err == nil:
			n++
		case !errors.Is(err, os.ErrNotExist):
			return 0, fmt.Errorf("certs: %w", err)
		}
	}
	return n, nil
}

// Dir returns the directory of the CA and the certificates.
func (c *Certs) Dir() string { return c.dir }

// CAFile returns the CA's certificate: the bundle every node and client
// trusts.
func (c *Certs) CAFile() string {
	f, _ := pki.CAFiles(c.dir)
	return f
}

// GossipKey returns the gossip keyring file in the directory
// (pki.GossipKeyFile), making a new key if it is absent.
func (c *Certs) GossipKey() (string, error) {
	path := filepath.Join(c.dir, pki.GossipKeyFile)
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := pki.WriteGossipKey(path); err != nil {
		return "", fmt.Errorf("certs: %w", err)
	}
	return path, nil
}

// Node returns node id's certificate files, issuing the certificate if its
// files are absent; it names pki.DefaultHosts and hosts.
func (c *Certs) Node(id string, hosts ...string) (TLSFiles, error) {
	all := slices.Clone(pki.DefaultHosts)
	for _, h := range hosts {
		if h != "" && !slices.Contains(all, h) {
			all = append(all, h)
		}
	}
	return c.Ensure(pki.Identity{Role: pki.RoleNode, Name: id}, all)
}

// Operator returns the files of operator name's certificate, issuing it if
// absent: it may call every RPC.
func (c *Certs) Operator(name string) (TLSFiles, error) {
	return c.Ensure(pki.Identity{Role: pki.RoleOperator, Name: name}, nil)
}

// Client returns the files of client name's certificate, issuing it if
// absent: it may acquire, release and read limits and status.
func (c *Certs) Client(name string) (TLSFiles, error) {
	return c.Ensure(pki.Identity{Role: pki.RoleClient, Name: name}, nil)
}

// Ensure returns the files of id's certificate in the directory. If both
// are absent it issues one, valid for pki.DefaultCertLifetime (or until the
// CA expires, if sooner), naming hosts
// if id is a node's (nil: pki.DefaultHosts); if both are present it leaves
// them as they are; one without the other is an error naming it.
func (c *Certs) Ensure(id pki.Identity, hosts []string) (TLSFiles, error) {
	certFile, keyFile := pki.CertFiles(c.dir, id)
	f := TLSFiles{CA: c.CAFile(), Cert: certFile, Key: keyFile}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch n, err := present(certFile, keyFile); {
	case err != nil:
		return f, err
	case n == 2:
		return f, nil
	case n == 1:
		return f, fmt.Errorf("certs: %s and %s go together; one is missing (remove the other to issue a new certificate)", certFile, keyFile)
	}
	// At most until the CA expires: a CA near its end still issues.
	life := min(pki.DefaultCertLifetime, time.Until(c.ca.Certificate().NotAfter))
	certPEM, keyPEM, err := c.ca.Issue(id, hosts, life)
	if err != nil {
		return f, err
	}
	if err := pki.WriteKeyPair(certFile, certPEM, keyFile, keyPEM); err != nil {
		return f, fmt.Errorf("certs: %w", err)
	}
	return f, nil
}
