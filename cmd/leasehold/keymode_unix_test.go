//go:build unix

package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestServeWarnsOfAnUnprotectedKey: serve starts with a TLS key file its
// group or others may read, and warns, naming the file, its mode and the
// chmod that fixes it; a 0600 or 0400 key starts quietly. Regression: a
// 0644 key started without a word.
func TestServeWarnsOfAnUnprotectedKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	mustCerts(t, "ca", "--dir", dir)
	mustCerts(t, "node", "--dir", dir, "n1")
	key := filepath.Join(dir, "node-n1-key.pem")
	for _, tc := range []struct {
		mode os.FileMode
		warn bool
	}{{0o644, true}, {0o640, true}, {0o604, true}, {0o600, false}, {0o400, false}} {
		if err := os.Chmod(key, tc.mode); err != nil {
			t.Fatal(err)
		}
		var logs strings.Builder
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		sec := addServeSecurityFlags(fs)
		if err := fs.Parse([]string{"--tls-ca", filepath.Join(dir, "ca.pem"), "--tls-cert", filepath.Join(dir, "node-n1.pem"),
			"--tls-key", key}); err != nil {
			t.Fatal(err)
		}
		if _, err := sec.source(slog.New(slog.NewTextHandler(&logs, nil)), "127.0.0.1:1"); err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("level=WARN msg=\"UNPROTECTED PRIVATE KEY FILE: --tls-key %s is mode %#o, open to others than its owner; "+
			"run chmod 600 %[1]s\"", key, tc.mode)
		if got := strings.Contains(logs.String(), want); got != tc.warn {
			t.Errorf("key of mode %#o: warned %v, want %v:\n%s", tc.mode, got, tc.warn, logs.String())
		}
	}
}
