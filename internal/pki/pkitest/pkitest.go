// Package pkitest makes a CA and certificates in a test's temporary
// directory, as net/http/httptest makes servers: for tests only.
package pkitest

import (
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/pki"
)

// Files are the three files a pki.Source reads.
type Files struct {
	Cert, Key, CA string
}

// Dir is a CA whose certificate is written in a temporary directory, with
// the certificates it issued next to it. It is not safe for concurrent use.
type Dir struct {
	t    testing.TB
	Path string  // the directory
	CA   *pki.CA // the CA
	// CAFile is the CA's certificate, the bundle every Source trusts.
	CAFile string
}

// New makes a CA valid for a day in a new temporary directory of t.
func New(t testing.TB) *Dir {
	t.Helper()
	d := &Dir{t: t, Path: t.TempDir()}
	ca, err := pki.NewCA("leasehold test CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	d.CA = ca
	d.CAFile = filepath.Join(d.Path, "ca.pem")
	if err := pki.WriteFile(d.CAFile, ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	return d
}

// Issue issues a certificate for id (a node's names loopback), valid for an
// hour, writes it and its key as <role>-<name>.pem and <role>-<name>-key.pem,
// and returns the files with the CA's.
func (d *Dir) Issue(id pki.Identity) Files {
	d.t.Helper()
	return d.IssueHosts(id, nil)
}

// IssueHosts is Issue with the hosts a node certificate names.
func (d *Dir) IssueHosts(id pki.Identity, hosts []string) Files {
	d.t.Helper()
	certPEM, keyPEM, err := d.CA.Issue(id, hosts, time.Hour)
	if err != nil {
		d.t.Fatal(err)
	}
	cert, key := pki.CertFiles(d.Path, id)
	f := Files{Cert: cert, Key: key, CA: d.CAFile}
	if err := pki.WriteKeyPair(f.Cert, certPEM, f.Key, keyPEM); err != nil {
		d.t.Fatal(err)
	}
	return f
}

// Source issues a certificate for id and returns a Source reading it, which
// logs to nowhere.
func (d *Dir) Source(id pki.Identity) *pki.Source {
	d.t.Helper()
	f := d.Issue(id)
	s, err := pki.NewSource(f.Cert, f.Key, f.CA, slog.New(slog.DiscardHandler))
	if err != nil {
		d.t.Fatal(err)
	}
	return s
}

// Node, Operator and Client are identities of each role.
func Node(id string) pki.Identity     { return pki.Identity{Role: pki.RoleNode, Name: id} }
func Operator(n string) pki.Identity  { return pki.Identity{Role: pki.RoleOperator, Name: n} }
func Client(name string) pki.Identity { return pki.Identity{Role: pki.RoleClient, Name: name} }

// NotAfter returns the NotAfter of the first certificate in the PEM file
// at path, failing t if there is none.
func NotAfter(t testing.TB, path string) time.Time {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s holds no PEM block", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.NotAfter
}
