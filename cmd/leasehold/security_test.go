package main

import (
	"flag"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
)

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:7101": true,
		"127.0.0.9:1":    true,
		"[::1]:7101":     true,
		"localhost:7101": true,
		"0.0.0.0:7101":   false,
		"[::]:7101":      false,
		":7101":          false,
		"10.0.0.1:7101":  false,
		"db.example:1":   false,
		"nonsense":       false,
	} {
		if got := isLoopback(addr); got != want {
			t.Errorf("isLoopback(%q) = %v; want %v", addr, got, want)
		}
	}
}

func TestServeSecurityFlags(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	mustCerts(t, "ca", "--dir", dir)
	mustCerts(t, "node", "--dir", dir, "n1")
	tlsArgs := []string{"--tls-ca", dir + "/ca.pem", "--tls-cert", dir + "/node-n1.pem", "--tls-key", dir + "/node-n1-key.pem"}
	loop := []string{"127.0.0.1:7101", "127.0.0.1:7201"}
	for _, tc := range []struct {
		name    string
		args    []string
		listen  []string
		wantTLS bool
		wantErr string
	}{
		{"TLS", tlsArgs, []string{"0.0.0.0:7101", "10.0.0.1:7201"}, true, ""},
		{"partial TLS", tlsArgs[:4], loop, false, "go together"},
		{"TLS and insecure", append([]string{"--insecure"}, tlsArgs...), loop, false, "exclude each other"},
		{"insecure on loopback", []string{"--insecure"}, loop, false, ""},
		{"no flags on loopback", nil, loop, false, "TLS is required: pass --tls-ca, --tls-cert and --tls-key"},
		{"no flags, remote Raft", nil, []string{"127.0.0.1:7101", "10.0.0.1:7201"}, false, "or --insecure for local play"},
		{"insecure on every interface", []string{"--insecure"}, []string{"0.0.0.0:7101", "127.0.0.1:7201"}, false, "--insecure-allow-remote"},
		{"insecure, remote Raft", []string{"--insecure"}, []string{"127.0.0.1:7101", "10.0.0.1:7201"}, false, "10.0.0.1:7201 is not a loopback"},
		{"insecure, remote allowed", []string{"--insecure", "--insecure-allow-remote"}, []string{"0.0.0.0:7101", "10.0.0.1:7201"}, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("serve", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			sec := addServeSecurityFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			src, err := sec.source(slog.New(slog.DiscardHandler), tc.listen...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("source() = %v; want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (src != nil) != tc.wantTLS {
				t.Fatalf("TLS = %v; want %v", src != nil, tc.wantTLS)
			}
		})
	}
}

func TestServeWarnsLoudlyWithoutTLS(t *testing.T) {
	var logs strings.Builder
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	sec := addServeSecurityFlags(fs)
	if err := fs.Parse([]string{"--insecure"}); err != nil {
		t.Fatal(err)
	}
	if _, err := sec.source(slog.New(slog.NewTextHandler(&logs, nil)), "127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "level=WARN msg=\"INSECURE: serving without TLS") {
		t.Fatalf("no warning logged:\n%s", logs.String())
	}
}

func TestClientSecurityFlags(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		env     map[string]string
		want    string // the CA file chosen; "" for plain text
		wantErr string
	}{
		{"flags", []string{"--ca", "a", "--cert", "b", "--key", "c"}, nil, "a", ""},
		{"environment", nil, map[string]string{envCA: "x", envCert: "y", envKey: "z"}, "x", ""},
		{"flags over environment", []string{"--ca", "a"}, map[string]string{envCA: "x", envCert: "y", envKey: "z"}, "a", ""},
		{"partial", []string{"--ca", "a"}, nil, "", "together"},
		{"insecure", []string{"--insecure"}, map[string]string{envCA: "x", envCert: "y", envKey: "z"}, "", ""},
		{"insecure and files", []string{"--insecure", "--cert", "b"}, nil, "", "exclude each other"},
		{"nothing", nil, nil, "", "no certificate: pass --ca, --cert and --key, or set $LEASEHOLD_CA"},
		{"nothing, with the cluster's files named", nil, nil, "", "export LEASEHOLD_CA=data/tls/ca.pem LEASEHOLD_CERT=data/tls/operator-admin.pem"},
		{"insecure alone", []string{"--insecure"}, nil, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{envCA, envCert, envKey} {
				t.Setenv(k, tc.env[k])
			}
			fs := flag.NewFlagSet("status", flag.ContinueOnError)
			sec := addClientSecurityFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			files, err := sec.files()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("files() = %v; want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if files != nil {
				got = files.CA
			}
			if got != tc.want {
				t.Fatalf("CA = %q; want %q", got, tc.want)
			}
		})
	}
}
