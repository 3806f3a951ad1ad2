package pki_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/internal/pki/pkitest"
	"github.com/leasehold/leasehold/internal/testlog"
)

func TestIdentityURIRoundTrip(t *testing.T) {
	for _, id := range []pki.Identity{pkitest.Node("n1"), pkitest.Operator("alice"), pkitest.Client("app-7.prod_x")} {
		u := id.URI()
		if want := "spiffe://leasehold/" + id.Role.String() + "/" + id.Name; u.String() != want {
			t.Errorf("URI(%v) = %s; want %s", id, u, want)
		}
		got, err := pki.IdentityOf(&x509.Certificate{URIs: []*url.URL{u}})
		if err != nil || got != id {
			t.Errorf("IdentityOf(URI(%v)) = %v, %v", id, got, err)
		}
	}
}

func TestValidName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"n1", true},
		{"a.b_c-D9", true},
		{"", false},
		{".hidden", false},
		{"a/b", false},
		{"a b", false},
		{"é", false},
		{strings.Repeat("x", pki.MaxNameLen), true},
		{strings.Repeat("x", pki.MaxNameLen+1), false},
	} {
		if err := pki.ValidName(tc.name); (err == nil) != tc.ok {
			t.Errorf("ValidName(%q) = %v; want ok %v", tc.name, err, tc.ok)
		}
	}
}

func TestIdentityOfWantsExactlyOne(t *testing.T) {
	mustURL := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	for _, tc := range []struct {
		name string
		uris []string
		want pki.Identity
		bad  bool
	}{
		{name: "none", uris: nil, bad: true},
		{name: "foreign only", uris: []string{"spiffe://example.org/node/n1", "https://leasehold/node/n1"}, bad: true},
		{name: "foreign ignored", uris: []string{"spiffe://example.org/x", "spiffe://leasehold/client/a"}, want: pkitest.Client("a")},
		{name: "two", uris: []string{"spiffe://leasehold/client/a", "spiffe://leasehold/operator/a"}, bad: true},
		{name: "unknown role", uris: []string{"spiffe://leasehold/admin/a"}, bad: true},
		{name: "bad name", uris: []string{"spiffe://leasehold/node/a/b"}, bad: true},
		{name: "query", uris: []string{"spiffe://leasehold/node/a?x=1"}, bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &x509.Certificate{}
			for _, s := range tc.uris {
				c.URIs = append(c.URIs, mustURL(s))
			}
			got, err := pki.IdentityOf(c)
			if tc.bad {
				if !errors.Is(err, pki.ErrNoIdentity) {
					t.Fatalf("IdentityOf = %v, %v; want ErrNoIdentity", got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("IdentityOf = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func parseCert(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := pem.Decode(b)
	if p == nil {
		t.Fatalf("%s: no PEM", file)
	}
	c, err := x509.ParseCertificate(p.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestIssuedCertificates(t *testing.T) {
	d := pkitest.New(t)
	node := parseCert(t, d.Issue(pkitest.Node("n1")).Cert)
	if !slicesEqual(node.DNSNames, []string{"localhost"}) || len(node.IPAddresses) != 2 ||
		!node.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) || !node.IPAddresses[1].Equal(net.ParseIP("::1")) {
		t.Errorf("node certificate names %v %v; want the loopback defaults", node.DNSNames, node.IPAddresses)
	}
	if !hasEKU(node, x509.ExtKeyUsageServerAuth) || !hasEKU(node, x509.ExtKeyUsageClientAuth) {
		t.Errorf("node certificate usages %v; want server and client auth", node.ExtKeyUsage)
	}
	if node.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("key algorithm %v; want ECDSA", node.PublicKeyAlgorithm)
	}
	client := parseCert(t, d.Issue(pkitest.Client("app")).Cert)
	if hasEKU(client, x509.ExtKeyUsageServerAuth) || !hasEKU(client, x509.ExtKeyUsageClientAuth) {
		t.Errorf("client certificate usages %v; want client auth only", client.ExtKeyUsage)
	}
	if len(client.DNSNames)+len(client.IPAddresses) != 0 {
		t.Errorf("client certificate names hosts %v %v", client.DNSNames, client.IPAddresses)
	}
	if _, _, err := d.CA.Issue(pkitest.Client("app"), []string{"example.com"}, time.Hour); err == nil {
		t.Error("Issue gave a client certificate hosts")
	}
	if _, _, err := d.CA.Issue(pkitest.Node("n1"), nil, 48*time.Hour); err == nil || !strings.Contains(err.Error(), "outlive") {
		t.Errorf("Issue beyond the CA's life = %v; want an error saying it would outlive the CA", err)
	}
	custom := parseCert(t, d.IssueHosts(pkitest.Node("n2"), []string{"db.example.com", "10.0.0.7"}).Cert)
	if !slicesEqual(custom.DNSNames, []string{"db.example.com"}) || len(custom.IPAddresses) != 1 {
		t.Errorf("node certificate names %v %v; want db.example.com and 10.0.0.7", custom.DNSNames, custom.IPAddresses)
	}
}

func hasEKU(c *x509.Certificate, u x509.ExtKeyUsage) bool {
	for _, e := range c.ExtKeyUsage {
		if e == u {
			return true
		}
	}
	return false
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestKeysAreWrittenPrivate(t *testing.T) {
	d := pkitest.New(t)
	f := d.Issue(pkitest.Node("n1"))
	for file, want := range map[string]os.FileMode{f.Key: 0o600, f.Cert: 0o644} {
		fi, err := os.Stat(file)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s has mode %v; want %v", filepath.Base(file), got, want)
		}
	}
	entries, err := os.ReadDir(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

func TestLoadCA(t *testing.T) {
	d := pkitest.New(t)
	keyPEM, err := d.CA.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(d.Path, "ca-key.pem")
	if err := pki.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	ca, err := pki.LoadCA(d.CAFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ca.CertPEM(), d.CA.CertPEM()) {
		t.Error("LoadCA read another certificate")
	}
	other, err := pki.NewCA("other", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherKey, _ := other.KeyPEM()
	if err := pki.WriteFile(keyFile, otherKey, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.LoadCA(d.CAFile, keyFile); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("LoadCA with another CA's key = %v; want a mismatch error", err)
	}
}

func TestNewSourceRefusesBadFiles(t *testing.T) {
	d := pkitest.New(t)
	n1 := d.Issue(pkitest.Node("n1"))
	n2 := d.Issue(pkitest.Node("n2"))
	foreign := pkitest.New(t)
	log := slog.New(slog.DiscardHandler)
	for _, tc := range []struct {
		name          string
		cert, key, ca string
		want          string
	}{
		{"key of another certificate", n1.Cert, n2.Key, d.CAFile, "private key does not match"},
		{"another CA", n1.Cert, n1.Key, foreign.CAFile, "does not verify"},
		{"missing file", n1.Cert, n1.Key, filepath.Join(d.Path, "nope.pem"), "no such file"},
		{"CA file without a certificate", n1.Cert, n1.Key, n1.Key, "holds no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := pki.NewSource(tc.cert, tc.key, tc.ca, log)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewSource = %v; want an error containing %q", err, tc.want)
			}
		})
	}
	s, err := pki.NewSource(n1.Cert, n1.Key, n1.CA, log)
	if err != nil {
		t.Fatal(err)
	}
	if s.Identity() != pkitest.Node("n1") {
		t.Errorf("Identity() = %v; want node/n1", s.Identity())
	}
}

// handshake runs one TLS handshake over loopback between srv and cli (cli's
// ServerName is serverName) and returns the server's view of the client's
// identity when both succeed, and each side's error; the client also reads
// one byte, so that a server's refusal after a TLS 1.3 client finished
// reaches it.
func handshake(t *testing.T, srv, cli *tls.Config, serverName string) (peer pki.Identity, serverErr, clientErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	wg.Go(func() {
		c, err := ln.Accept()
		if err != nil {
			serverErr = err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Server(c, srv)
		if serverErr = tc.Handshake(); serverErr == nil {
			peer, _ = pki.PeerIdentity(tc.ConnectionState())
			_, serverErr = tc.Write([]byte{1})
		}
	})
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	cfg := cli.Clone()
	cfg.ServerName = serverName
	tc := tls.Client(c, cfg)
	if clientErr = tc.Handshake(); clientErr == nil {
		_, clientErr = tc.Read(make([]byte, 1))
	}
	c.Close()
	wg.Wait()
	return peer, serverErr, clientErr
}

func TestMutualTLS(t *testing.T) {
	d := pkitest.New(t)
	node := d.Source(pkitest.Node("n1"))
	app := d.Source(pkitest.Client("app"))
	foreign := pkitest.New(t).Source(pkitest.Client("app"))

	t.Run("client certificate accepted", func(t *testing.T) {
		peer, serr, cerr := handshake(t, node.ServerConfig(nil), app.ClientConfig(true, pki.RequireRole(pki.RoleNode)), "127.0.0.1")
		if serr != nil || cerr != nil {
			t.Fatalf("handshake: server %v, client %v", serr, cerr)
		}
		if peer != pkitest.Client("app") {
			t.Fatalf("server sees %v; want client/app", peer)
		}
	})
	t.Run("no client certificate", func(t *testing.T) {
		cli := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}
		_, serr, _ := handshake(t, node.ServerConfig(nil), cli, "127.0.0.1")
		if serr == nil {
			t.Fatal("server accepted a client without a certificate")
		}
	})
	t.Run("client of another CA", func(t *testing.T) {
		_, serr, _ := handshake(t, node.ServerConfig(nil), foreign.ClientConfig(false, nil), "127.0.0.1")
		if serr == nil {
			t.Fatal("server accepted a certificate of another CA")
		}
	})
	t.Run("server of another CA", func(t *testing.T) {
		fnode := pkitest.New(t).Source(pkitest.Node("n1"))
		_, _, cerr := handshake(t, fnode.ServerConfig(nil), app.ClientConfig(false, nil), "127.0.0.1")
		if cerr == nil {
			t.Fatal("client accepted a server of another CA")
		}
	})
	t.Run("host not named", func(t *testing.T) {
		_, _, cerr := handshake(t, node.ServerConfig(nil), app.ClientConfig(true, nil), "db.example.com")
		if cerr == nil || !strings.Contains(cerr.Error(), "db.example.com") {
			t.Fatalf("client error %v; want a host name mismatch", cerr)
		}
	})
	t.Run("server is not a node", func(t *testing.T) {
		// A client certificate cannot serve: it is not for server auth.
		_, _, cerr := handshake(t, app.ServerConfig(nil), app.ClientConfig(false, nil), "")
		if cerr == nil {
			t.Fatal("client accepted a server with a client certificate")
		}
	})
	t.Run("role refused by server", func(t *testing.T) {
		_, serr, _ := handshake(t, node.ServerConfig(pki.RequireRole(pki.RoleNode)), app.ClientConfig(false, nil), "")
		if serr == nil || !strings.Contains(serr.Error(), "want a node certificate") {
			t.Fatalf("server error %v; want the client's role refused", serr)
		}
	})
	t.Run("identity refused by client", func(t *testing.T) {
		_, _, cerr := handshake(t, node.ServerConfig(nil), app.ClientConfig(false, pki.RequireIdentity(pkitest.Node("n2"))), "")
		if cerr == nil || !strings.Contains(cerr.Error(), "want node/n2") {
			t.Fatalf("client error %v; want node/n1 refused", cerr)
		}
	})
	t.Run("TLS 1.1 refused", func(t *testing.T) {
		cli := app.ClientConfig(false, nil)
		cli.MinVersion, cli.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
		_, serr, cerr := handshake(t, node.ServerConfig(nil), cli, "")
		if serr == nil || cerr == nil {
			t.Fatalf("TLS 1.1 handshake: server %v, client %v; want both to fail", serr, cerr)
		}
		if !strings.Contains(serr.Error(), "version") {
			t.Errorf("server error %v; want a protocol version error", serr)
		}
	})
}

// serialSeen returns the serial of the certificate the server presents.
func serialSeen(t *testing.T, srv *tls.Config, cli *pki.Source) string {
	t.Helper()
	var serial string
	cfg := cli.ClientConfig(false, nil)
	verify := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		serial = cs.PeerCertificates[0].SerialNumber.String()
		return verify(cs)
	}
	_, serr, cerr := handshake(t, srv, cfg, "")
	if serr != nil || cerr != nil {
		t.Fatalf("handshake: server %v, client %v", serr, cerr)
	}
	return serial
}

func TestSourceReloadsRotatedCertificate(t *testing.T) {
	d := pkitest.New(t)
	f := d.Issue(pkitest.Node("n1"))
	node, err := pki.NewSource(f.Cert, f.Key, f.CA, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	app := d.Source(pkitest.Client("app"))
	srv := node.ServerConfig(nil) // made once, as a server does
	before := serialSeen(t, srv, app)
	d.Issue(pkitest.Node("n1")) // rotate: new key pair in the same files
	after := serialSeen(t, srv, app)
	if before == after {
		t.Fatalf("the server presents serial %s after the rotation too", after)
	}
	if err := node.Err(); err != nil {
		t.Fatalf("Err() = %v after a good rotation", err)
	}
}

func TestSourceReloadsRotatedCA(t *testing.T) {
	old := pkitest.New(t)
	f := old.Issue(pkitest.Node("n1"))
	node, err := pki.NewSource(f.Cert, f.Key, f.CA, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := node.ServerConfig(nil) // made once, as a server does
	// A client of a new CA that already trusts both (step 1 of a CA
	// rotation, done on the client first).
	next := pkitest.New(t)
	nf := next.Issue(pkitest.Client("app"))
	bundle := append(append([]byte{}, old.CA.CertPEM()...), next.CA.CertPEM()...)
	bundleFile := filepath.Join(next.Path, "bundle.pem")
	if err := pki.WriteFile(bundleFile, bundle, 0o644); err != nil {
		t.Fatal(err)
	}
	app, err := pki.NewSource(nf.Cert, nf.Key, bundleFile, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, serr, _ := handshake(t, srv, app.ClientConfig(false, nil), ""); serr == nil {
		t.Fatal("the server accepted a client of a CA it does not trust yet")
	}
	// The server's bundle gets the new CA too: new connections see it.
	if err := pki.WriteFile(f.CA, bundle, 0o644); err != nil {
		t.Fatal(err)
	}
	if peer, serr, cerr := handshake(t, srv, app.ClientConfig(false, nil), ""); serr != nil || cerr != nil || peer != pkitest.Client("app") {
		t.Fatalf("after the bundle changed: server %v, client %v, peer %v; want the new CA's client accepted", serr, cerr, peer)
	}
}

func TestSourceKeepsLastGoodSetOnBadReload(t *testing.T) {
	d := pkitest.New(t)
	f := d.Issue(pkitest.Node("n1"))
	var logs testlog.Buffer
	node, err := pki.NewSource(f.Cert, f.Key, f.CA, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	app := d.Source(pkitest.Client("app"))
	srv := node.ServerConfig(nil)
	before := serialSeen(t, srv, app)

	// Half a rotation: a new certificate, the old key.
	certPEM, _, err := d.CA.Issue(pkitest.Node("n1"), nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteFile(f.Cert, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if got := serialSeen(t, srv, app); got != before {
			t.Fatalf("serial %s after a bad reload; want the previous %s", got, before)
		}
	}
	if err := node.Err(); err == nil || !strings.Contains(err.Error(), "private key does not match") {
		t.Fatalf("Err() = %v; want the mismatch", err)
	}
	if n := strings.Count(logs.String(), "cannot load the changed certificate files"); n != 1 {
		t.Fatalf("logged the bad set %d times; want once:\n%s", n, logs.String())
	}

	// Another node's certificate in n1's files is refused too.
	other := d.Issue(pkitest.Node("n2"))
	for _, p := range [][2]string{{other.Cert, f.Cert}, {other.Key, f.Key}} {
		b, err := os.ReadFile(p[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := pki.WriteFile(p[1], b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := node.Err(); err == nil || !strings.Contains(err.Error(), "now names node/n2") {
		t.Fatalf("Err() = %v; want the identity change refused", err)
	}
	if node.Identity() != pkitest.Node("n1") {
		t.Fatalf("Identity() = %v", node.Identity())
	}
}

// TestSourceNotAfterFollowsRotation: NotAfter gives the expiry of the
// certificate and CA the next handshake uses, so it changes with the files
// without a restart.
func TestSourceNotAfterFollowsRotation(t *testing.T) {
	d := pkitest.New(t)
	f := d.Issue(pkitest.Node("n1"))
	s, err := pki.NewSource(f.Cert, f.Key, f.CA, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	cert, ca := s.NotAfter()
	if want := pkitest.NotAfter(t, f.Cert); !cert.Equal(want) {
		t.Errorf("certificate NotAfter = %v; want %v", cert, want)
	}
	if want := d.CA.Certificate().NotAfter; !ca.Equal(want) {
		t.Errorf("CA NotAfter = %v; want %v", ca, want)
	}

	// A CA rotation: the bundle holds both CAs, the node's certificate is
	// the new CA's, with another lifetime than the first.
	next, err := pki.NewCA("next", 72*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := next.Issue(pkitest.Node("n1"), nil, 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteFile(f.CA, append(append([]byte{}, d.CA.CertPEM()...), next.CertPEM()...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteKeyPair(f.Cert, certPEM, f.Key, keyPEM); err != nil {
		t.Fatal(err)
	}
	cert, ca = s.NotAfter()
	if want := pkitest.NotAfter(t, f.Cert); !cert.Equal(want) {
		t.Errorf("after the rotation, certificate NotAfter = %v; want the new one's, %v", cert, want)
	}
	if want := next.Certificate().NotAfter; !ca.Equal(want) {
		t.Errorf("after the rotation, CA NotAfter = %v; want the new CA's, %v", ca, want)
	}
}
