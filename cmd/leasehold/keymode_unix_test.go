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

// TestGossipKeyOfAnyModeStartsWithAWarning: a gossip key its group or
// others may read is taken with the TLS key's warning, not refused.
// Regression: a 0644 gossip key (a Kubernetes secret's default mode) was
// refused while a 0644 TLS key only warned.
func TestGossipKeyOfAnyModeStartsWithAWarning(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	mustCerts(t, "gossip-key", "--dir", dir)
	key := filepath.Join(dir, "gossip.key")
	for _, tc := range []struct {
		mode os.FileMode
		warn bool
	}{{0o644, true}, {0o640, true}, {0o600, false}, {0o400, false}} {
		if err := os.Chmod(key, tc.mode); err != nil {
			t.Fatal(err)
		}
		var logs strings.Builder
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		g := addGossipFlags(fs)
		if err := fs.Parse([]string{"--gossip-addr", "127.0.0.1:7401", "--gossip-key-file", key}); err != nil {
			t.Fatal(err)
		}
		cfg, err := g.config(fs, slog.New(slog.NewTextHandler(&logs, nil)), "127.0.0.1:7101", "127.0.0.1:7301", true)
		if err != nil || cfg == nil || len(cfg.Keys) != 1 {
			t.Fatalf("key of mode %#o: config %+v, %v", tc.mode, cfg, err)
		}
		want := fmt.Sprintf("level=WARN msg=\"UNPROTECTED PRIVATE KEY FILE: --gossip-key-file %s is mode %#o, open to others than its owner; "+
			"run chmod 600 %[1]s\"", key, tc.mode)
		if got := strings.Contains(logs.String(), want); got != tc.warn {
			t.Errorf("key of mode %#o: warned %v, want %v:\n%s", tc.mode, got, tc.warn, logs.String())
		}
	}
}
