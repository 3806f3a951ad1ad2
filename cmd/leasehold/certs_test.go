package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/leasehold/leasehold/internal/pki"
)

// certs runs `leasehold certs args...` and returns its output.
func certs(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := runCerts(context.Background(), args, &out)
	return out.String(), err
}

func mustCerts(t *testing.T, args ...string) string {
	t.Helper()
	out, err := certs(t, args...)
	if err != nil {
		t.Fatalf("certs %v: %v", args, err)
	}
	return out
}

func serialOf(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(p.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber.String()
}

func TestCertsCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	mustCerts(t, "ca", "--dir", dir)
	mustCerts(t, "node", "--dir", dir, "n1")
	mustCerts(t, "node", "n2", "--dir", dir, "--hosts", "n2.example.com,10.0.0.2")
	mustCerts(t, "operator", "--dir", dir, "alice")
	out := mustCerts(t, "client", "--dir", dir, "app")
	if !strings.Contains(out, "spiffe://leasehold/client/app") {
		t.Errorf("output %q does not name the identity", out)
	}
	for _, f := range []struct {
		name string
		mode os.FileMode
	}{
		{"ca.pem", 0o644}, {"ca-key.pem", 0o600},
		{"node-n1.pem", 0o644}, {"node-n1-key.pem", 0o600},
		{"node-n2.pem", 0o644}, {"node-n2-key.pem", 0o600},
		{"operator-alice.pem", 0o644}, {"operator-alice-key.pem", 0o600},
		{"client-app.pem", 0o644}, {"client-app-key.pem", 0o600},
	} {
		fi, err := os.Stat(filepath.Join(dir, f.name))
		if err != nil {
			t.Errorf("%s: %v", f.name, err)
			continue
		}
		if fi.Mode().Perm() != f.mode {
			t.Errorf("%s has mode %v; want %v", f.name, fi.Mode().Perm(), f.mode)
		}
	}
	for file, want := range map[string]pki.Identity{
		"node-n1":        {Role: pki.RoleNode, Name: "n1"},
		"operator-alice": {Role: pki.RoleOperator, Name: "alice"},
		"client-app":     {Role: pki.RoleClient, Name: "app"},
	} {
		src, err := pki.NewSource(filepath.Join(dir, file+".pem"), filepath.Join(dir, file+"-key.pem"), filepath.Join(dir, "ca.pem"), nil)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if src.Identity() != want {
			t.Errorf("%s carries %v; want %v", file, src.Identity(), want)
		}
	}
	b, _ := os.ReadFile(filepath.Join(dir, "node-n2.pem"))
	p, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(p.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.DNSNames) != 1 || c.DNSNames[0] != "n2.example.com" || len(c.IPAddresses) != 1 || c.IPAddresses[0].String() != "10.0.0.2" {
		t.Errorf("node-n2 names %v %v; want n2.example.com and 10.0.0.2", c.DNSNames, c.IPAddresses)
	}

	// Nothing is overwritten without --force; with it, a certificate is
	// rotated in place.
	for _, args := range [][]string{{"ca", "--dir", dir}, {"node", "--dir", dir, "n1"}} {
		if _, err := certs(t, args...); err == nil || !strings.Contains(err.Error(), "--force") {
			t.Errorf("certs %v over existing files: %v; want a refusal naming --force", args, err)
		}
	}
	before := serialOf(t, filepath.Join(dir, "node-n1.pem"))
	mustCerts(t, "node", "--dir", dir, "--force", "n1")
	if serialOf(t, filepath.Join(dir, "node-n1.pem")) == before {
		t.Error("certs node --force did not replace the certificate")
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"node", "--dir", dir, "a/b"}, "only letters"},
		{[]string{"node", "--dir", dir}, "missing the node ID"},
		{[]string{"client", "--dir", dir, "--hosts", "x", "app2"}, "flag provided but not defined"},
		{[]string{"client", "--dir", filepath.Join(t.TempDir(), "none"), "app"}, "certs ca --dir"},
		{[]string{"admin", "--dir", dir, "x"}, "unknown kind"},
		{[]string{"client", "--dir", dir, "--days", "0", "app3"}, "--days 0"},
		{[]string{"client", "--dir", dir, "--days", "100000", "app4"}, "outlive"},
		{[]string{"client", "--dir", dir, "app5", "extra"}, "unexpected arguments"},
	} {
		if _, err := certs(t, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("certs %v: %v; want an error containing %q", tc.args, err, tc.want)
		}
	}
}

// TestGossipKeyRollingSaysHow: a second `certs gossip-key` refused with
// "put a new base64 key on its first line", and nothing in the CLI printed
// one. The refusal names the command that makes one, and the file is kept.
func TestGossipKeyRollingSaysHow(t *testing.T) {
	dir := t.TempDir()
	var out strings.Builder
	if err := runCerts(context.Background(), []string{"gossip-key", "--dir", dir}, &out); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "gossip.key")
	if !strings.Contains(out.String(), "wrote "+path) {
		t.Errorf("certs gossip-key printed %q; want it to say it wrote %s", out.String(), path)
	}
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	err = runCerts(context.Background(), []string{"gossip-key", "--dir", dir}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "leasehold certs gossip-key --dir DIR") {
		t.Errorf("a second certs gossip-key: %v; want a refusal naming how to make a new key", err)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Error("the refused call changed the keyring")
	}
}
