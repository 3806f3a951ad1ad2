package proc_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/internal/proc"
	"github.com/leasehold/leasehold/internal/proc/proctest"
)

func readCert(t *testing.T, file string) *x509.Certificate {
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

// TestCertsMadeOnceAndKept: a directory's CA and certificates are made on
// first use and reused after, never issued again, even when a certificate
// was rewritten in place (a rotation); half a pair is an error.
func TestCertsMadeOnceAndKept(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	certs, err := proc.OpenCerts(dir)
	if err != nil {
		t.Fatal(err)
	}
	n1, err := certs.Node("n1")
	if err != nil {
		t.Fatal(err)
	}
	op, err := certs.Operator(proc.AdminName)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "operator-admin.pem"); op.Cert != want || op.CA != filepath.Join(dir, "ca.pem") {
		t.Errorf("operator files %+v; want %s and the CA in %s", op, want, dir)
	}
	for file, mode := range map[string]os.FileMode{dir: 0o700 | os.ModeDir, n1.Key: 0o600, n1.Cert: 0o644, op.Key: 0o600} {
		if fi, err := os.Stat(file); err != nil || fi.Mode() != mode {
			t.Errorf("%s: %v, %v; want mode %v", file, fi.Mode(), err, mode)
		}
	}
	caBefore, _ := os.ReadFile(certs.CAFile())
	serial := readCert(t, n1.Cert).SerialNumber

	again, err := proc.OpenCerts(dir)
	if err != nil {
		t.Fatal(err)
	}
	n1Again, err := again.Node("n1")
	if err != nil {
		t.Fatal(err)
	}
	if caAfter, _ := os.ReadFile(again.CAFile()); !bytes.Equal(caBefore, caAfter) {
		t.Error("OpenCerts made a new CA over an existing one")
	}
	if n1Again != n1 || readCert(t, n1.Cert).SerialNumber.Cmp(serial) != 0 {
		t.Errorf("Node issued n1 again: %+v, serial %v -> %v", n1Again, serial, readCert(t, n1.Cert).SerialNumber)
	}

	// A rotation (what `leasehold certs node --force n1` writes) is kept.
	ca, err := pki.LoadCA(pki.CAFiles(dir))
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(pki.Identity{Role: pki.RoleNode, Name: "n1"}, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteKeyPair(n1.Cert, certPEM, n1.Key, keyPEM); err != nil {
		t.Fatal(err)
	}
	rotated := readCert(t, n1.Cert).SerialNumber
	if _, err := again.Node("n1"); err != nil || readCert(t, n1.Cert).SerialNumber.Cmp(rotated) != 0 {
		t.Errorf("Node after a rotation: %v; the rotated certificate was replaced", err)
	}

	if err := os.Remove(op.Key); err != nil {
		t.Fatal(err)
	}
	if _, err := again.Operator(proc.AdminName); err == nil || !strings.Contains(err.Error(), "go together") {
		t.Errorf("Operator with its key missing: %v; want an error naming the pair", err)
	}
	caCert, _ := pki.CAFiles(dir)
	if err := os.Remove(caCert); err != nil {
		t.Fatal(err)
	}
	if _, err := proc.OpenCerts(dir); err == nil || !strings.Contains(err.Error(), "ca.pem") {
		t.Errorf("OpenCerts with ca.pem missing: %v; want an error naming it", err)
	}
}

// TestLayoutGivesEveryNodeACertificate: by default each node serves TLS
// with its own node certificate from Dir/tls, naming loopback and the
// layout's host.
func TestLayoutGivesEveryNodeACertificate(t *testing.T) {
	dir := t.TempDir()
	l := proc.Layout{Nodes: 2, Dir: dir, Host: "127.0.0.2", BasePort: 7100}
	specs, err := l.Specs()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range specs {
		if s.TLS == nil {
			t.Fatalf("%s has no TLS files", s.ID)
		}
		args := strings.Join(s.Args(), " ")
		want := "--tls-ca " + filepath.Join(dir, "tls", "ca.pem") + " --tls-cert " + filepath.Join(dir, "tls", "node-"+s.ID+".pem")
		if !strings.Contains(args, want) || strings.Contains(args, "--insecure") {
			t.Errorf("%s: args %q; want %q and no --insecure", s.ID, args, want)
		}
		c := readCert(t, s.TLS.Cert)
		id, err := pki.IdentityOf(c)
		if err != nil || id != (pki.Identity{Role: pki.RoleNode, Name: s.ID}) {
			t.Errorf("%s: certificate of %v, %v", s.ID, id, err)
		}
		if !slices.ContainsFunc(c.IPAddresses, func(ip net.IP) bool { return ip.Equal(net.ParseIP("127.0.0.2")) }) {
			t.Errorf("%s: certificate names %v; want the layout's host 127.0.0.2 too", s.ID, c.IPAddresses)
		}
	}
}

// TestClusterOverTLSRefusesPlainText: the default cluster serves TLS, which
// its own connections speak (with the operator certificate); a connection
// in plain text gets no answer. An Insecure cluster is the reverse. Either
// way Dial with the cluster's Security gets an answer.
func TestClusterOverTLSRefusesPlainText(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, insecure := range []bool{false, true} {
		var opts []func(*proc.Layout)
		if insecure {
			opts = append(opts, proctest.Insecure)
		}
		c := proctest.StartCluster(t, 1, opts...)
		if (c.Certs() == nil) != insecure {
			t.Fatalf("insecure %v: Certs() = %v", insecure, c.Certs())
		}
		plain, err := proc.Dial(c.Endpoints(), proc.Plaintext)
		if err != nil {
			t.Fatal(err)
		}
		st := plain.Status(ctx, time.Second)[0]
		plain.Close()
		if (st.Err == nil) != insecure {
			t.Errorf("insecure %v: Status in plain text = %v, %v", insecure, st.Status, st.Err)
		}
		// The cluster's own Security is what its nodes serve.
		if got := c.Security(); got.Insecure != insecure || (got.TLS == nil) != insecure {
			t.Errorf("insecure %v: Security() = %v", insecure, got)
		}
		own, err := proc.Dial(c.Endpoints(), c.Security())
		if err != nil {
			t.Fatal(err)
		}
		st = own.Status(ctx, 5*time.Second)[0]
		own.Close()
		if st.Err != nil {
			t.Errorf("insecure %v: Status with the cluster's Security (%v): %v", insecure, c.Security(), st.Err)
		}
	}
}
