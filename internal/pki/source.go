package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// Source is a certificate, its key and the CA bundle that verifies peers,
// read from three PEM files and read again whenever one of them changes: each
// handshake of a configuration made by ServerConfig or ClientConfig first
// checks the files (a stat each) and, if one changed, loads the set anew.
// New connections therefore use a rotated certificate or CA at once;
// established ones keep theirs.
//
// A set that does not load (unreadable, a key that does not match its
// certificate, a certificate not signed by the bundle, expired, or naming
// another identity than the first one did) is not used: the Source keeps
// the last good set, logs the problem once, and tries again when the files
// change again. The CA file may hold several certificates; during a CA
// rotation it holds the old and the new.
//
// A Source is safe for concurrent use.
type Source struct {
	files [3]string // cert, key, CA
	log   *slog.Logger
	id    Identity // fixed by the first load

	mu struct {
		sync.Mutex
		cur *material
		// seen are the files' stamps when cur was loaded, or when a
		// later set failed to load (so it is not retried until the files
		// change again).
		seen [3]os.FileInfo
		err  error // the last load's error; nil after a good load
	}
}

// material is one loaded set of files.
type material struct {
	cert *tls.Certificate // Leaf set
	pool *x509.CertPool
	// caNotAfter is when the CA that verifies cert expires: the latest
	// of the roots cert has a chain to (a CA renewed with its key kept
	// is in the bundle twice, and both copies verify cert).
	caNotAfter time.Time
}

// NewSource loads certFile, keyFile and caFile and returns a Source that
// reloads them when they change. log receives reload messages; nil is
// slog.Default(). The certificate must carry a Leasehold identity, match
// its key and be signed by a CA in caFile.
func NewSource(certFile, keyFile, caFile string, log *slog.Logger) (*Source, error) {
	if log == nil {
		log = slog.Default()
	}
	s := &Source{files: [3]string{certFile, keyFile, caFile}, log: log}
	stamps, err := s.stat()
	if err != nil {
		return nil, err
	}
	m, id, err := s.load(nil)
	if err != nil {
		return nil, err
	}
	s.id = id
	s.mu.cur, s.mu.seen = m, stamps
	return s, nil
}

// Identity returns the identity the Source's certificate carries. It does
// not change over the Source's life: a new certificate naming another
// identity is refused.
func (s *Source) Identity() Identity { return s.id }

// Files returns the certificate, key and CA files the Source reads.
func (s *Source) Files() (cert, key, ca string) { return s.files[0], s.files[1], s.files[2] }

// NotAfter returns when the Source's current certificate expires, and when
// the CA in the bundle that verifies it does. It checks the files first, so
// after a rotation it gives the new certificate's, as the next handshake
// presents it.
func (s *Source) NotAfter() (cert, ca time.Time) {
	m := s.material()
	return m.cert.Leaf.NotAfter, m.caNotAfter
}

// Err returns why the files, as they are now, were not loaded, or nil if
// the Source uses them. It checks the files first.
func (s *Source) Err() error {
	s.material()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.err
}

// stat returns the three files' stamps.
func (s *Source) stat() ([3]os.FileInfo, error) {
	var out [3]os.FileInfo
	for i, f := range s.files {
		fi, err := os.Stat(f)
		if err != nil {
			return out, fmt.Errorf("tls: %w", err)
		}
		out[i] = fi
	}
	return out, nil
}

// material returns the current set, loading the files again first if any
// changed since they were last looked at.
func (s *Source) material() *material {
	s.mu.Lock()
	defer s.mu.Unlock()
	stamps, err := s.stat()
	if err != nil {
		s.failedLocked(stamps, err)
		return s.mu.cur
	}
	if sameStamps(stamps, s.mu.seen) {
		return s.mu.cur
	}
	m, _, err := s.load(&s.id)
	if err != nil {
		s.failedLocked(stamps, err)
		return s.mu.cur
	}
	s.mu.cur, s.mu.seen, s.mu.err = m, stamps, nil
	s.log.Info("tls: loaded a new certificate or CA", "identity", s.id.String(), "cert", s.files[0],
		"ca", s.files[2], "not_after", m.cert.Leaf.NotAfter)
	return m
}

// failedLocked records that the files, as stamped, did not load, and logs
// it the first time.
func (s *Source) failedLocked(stamps [3]os.FileInfo, err error) {
	if s.mu.err == nil || !sameStamps(stamps, s.mu.seen) {
		s.log.Warn("tls: cannot load the changed certificate files; keeping the previous ones", "err", err)
	}
	s.mu.seen, s.mu.err = stamps, err
}

// sameStamps reports whether every file is the same file, of the same size
// and modification time, in a and b. A nil stamp (a file that could not be
// read) matches only nil.
func sameStamps(a, b [3]os.FileInfo) bool {
	for i := range a {
		switch {
		case a[i] == nil || b[i] == nil:
			if a[i] != b[i] {
				return false
			}
		case !os.SameFile(a[i], b[i]) || a[i].Size() != b[i].Size() || !a[i].ModTime().Equal(b[i].ModTime()):
			return false
		}
	}
	return true
}

// load reads and checks the files. If want is not nil, the certificate
// must carry that identity.
func (s *Source) load(want *Identity) (*material, Identity, error) {
	certFile, keyFile, caFile := s.files[0], s.files[1], s.files[2]
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, Identity{}, fmt.Errorf("tls: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, Identity{}, fmt.Errorf("tls: %w", err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, Identity{}, fmt.Errorf("tls: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, Identity{}, fmt.Errorf("tls: certificate %s and key %s: %w", certFile, keyFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, Identity{}, fmt.Errorf("tls: certificate %s: %w", certFile, err)
		}
	}
	id, err := IdentityOf(cert.Leaf)
	if err != nil {
		return nil, Identity{}, fmt.Errorf("tls: certificate %s: %w", certFile, err)
	}
	if want != nil && id != *want {
		return nil, Identity{}, fmt.Errorf("tls: certificate %s now names %s, not %s; restart to change identity", certFile, id, *want)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, Identity{}, fmt.Errorf("tls: CA file %s holds no PEM certificate", caFile)
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	chains, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return nil, Identity{}, fmt.Errorf("tls: certificate %s does not verify against the CA in %s: %w", certFile, caFile, err)
	}
	m := &material{cert: &cert, pool: pool}
	for _, chain := range chains {
		if root := chain[len(chain)-1]; root.NotAfter.After(m.caNotAfter) {
			m.caNotAfter = root.NotAfter
		}
	}
	return m, id, nil
}

// ServerConfig returns the TLS configuration of a server: TLS 1.2 or later,
// the Source's current certificate, and a client certificate required and
// verified against the current CA bundle. If accept is not nil, the
// handshake also fails unless accept returns nil for the client's identity
// (a certificate without one fails too). Each handshake reads the Source's
// current files.
func (s *Source) ServerConfig(accept func(Identity) error) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			m := s.material()
			c := &tls.Config{
				MinVersion:   tls.VersionTLS12,
				Certificates: []tls.Certificate{*m.cert},
				ClientCAs:    m.pool,
				ClientAuth:   tls.RequireAndVerifyClientCert,
			}
			if accept != nil {
				c.VerifyConnection = func(cs tls.ConnectionState) error {
					id, err := PeerIdentity(cs)
					if err != nil {
						return err
					}
					return accept(id)
				}
			}
			return c, nil
		},
	}
}

// ClientConfig returns the TLS configuration of a client: TLS 1.2 or later,
// the Source's current certificate, and the server's certificate verified
// against the current CA bundle, for server use, with a Leasehold identity
// that accept (if not nil) returns nil for. With verifyHost, the
// certificate must also name the host dialed (tls.Config.ServerName, which
// gRPC sets from the target). Each handshake reads the Source's current
// files.
//
// crypto/tls's own verification is off (InsecureSkipVerify) because its
// RootCAs are fixed when the configuration is made; VerifyConnection does
// the same verification against the Source's current bundle instead.
func (s *Source) ClientConfig(verifyHost bool, accept func(Identity) error) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // verified by VerifyConnection against the current CA bundle
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return s.material().cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			return s.verifyServer(cs, verifyHost, accept)
		},
	}
}

// verifyServer verifies a server's certificate chain against the current
// CA bundle, then its identity.
func (s *Source) verifyServer(cs tls.ConnectionState, verifyHost bool, accept func(Identity) error) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: the server presented no certificate")
	}
	m := s.material()
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	opts := x509.VerifyOptions{Roots: m.pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if verifyHost {
		opts.DNSName = cs.ServerName
	}
	leaf := cs.PeerCertificates[0]
	if _, err := leaf.Verify(opts); err != nil {
		return fmt.Errorf("tls: server certificate: %w", err)
	}
	id, err := IdentityOf(leaf)
	if err != nil {
		return err
	}
	if accept != nil {
		return accept(id)
	}
	return nil
}

// RequireRole returns an accept function for ServerConfig and ClientConfig
// that admits only identities of role r.
func RequireRole(r Role) func(Identity) error {
	return func(id Identity) error {
		if id.Role != r {
			return fmt.Errorf("tls: peer is %s; want a %s certificate", id, r)
		}
		return nil
	}
}

// RequireIdentity returns an accept function that admits only want.
func RequireIdentity(want Identity) func(Identity) error {
	return func(id Identity) error {
		if id != want {
			return fmt.Errorf("tls: peer is %s; want %s", id, want)
		}
		return nil
	}
}
