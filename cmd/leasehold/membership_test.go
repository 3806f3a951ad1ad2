package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"log/slog"
	"strings"
	"testing"
)

// TestGossipFlags: membership flags need --gossip-addr; with TLS a gossip
// key is required; --insecure gossips in plain text, loudly; the client and
// HTTP addresses are gossiped.
func TestGossipFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		tls  bool
		want string // error substring; "" for none
		on   bool   // membership on
	}{
		{name: "off", args: nil},
		{name: "join without gossip", args: []string{"--join", "127.0.0.1:7401"}, want: "--join needs --gossip-addr"},
		{name: "expect without gossip", args: []string{"--bootstrap-expect", "3"}, want: "--bootstrap-expect needs --gossip-addr"},
		{name: "TLS without a key", args: []string{"--gossip-addr", "127.0.0.1:7401"}, tls: true, want: "--gossip-key-file is required with TLS"},
		{name: "insecure plain text", args: []string{"--gossip-addr", "127.0.0.1:7401", "--join", "a:1,b:2"}, on: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("serve", flag.ContinueOnError)
			g := addGossipFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			var logs bytes.Buffer
			cfg, err := g.config(fs, slog.New(slog.NewTextHandler(&logs, nil)), "127.0.0.1:7101", "127.0.0.1:7301", tc.tls)
			switch {
			case tc.want != "":
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want %q", err, tc.want)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			if (cfg != nil) != tc.on {
				t.Fatalf("config %+v, want membership on=%v", cfg, tc.on)
			}
			if tc.on && (!cfg.Insecure || !strings.Contains(logs.String(), "INSECURE") || len(cfg.Join) != 2 || cfg.ClientAddr != "127.0.0.1:7101" ||
				cfg.HTTPAddr != "127.0.0.1:7301") {
				t.Fatalf("config %+v, logs %q", cfg, logs.String())
			}
		})
	}
}

func TestRemoveNeedsAnID(t *testing.T) {
	if err := runRemove(context.Background(), []string{"--insecure"}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "usage") {
		t.Fatalf("remove without an id: %v", err)
	}
}

// TestRemoveTakesFlagsAfterTheID: `remove n2 --force` parses --force.
// Regression: any argument after the id made remove print its usage, so
// the flags after the id it meant to parse were refused.
func TestRemoveTakesFlagsAfterTheID(t *testing.T) {
	for _, tc := range []struct {
		args []string
		says string
	}{
		{[]string{"--insecure", "n2", "--timeout", "soon"}, `invalid value "soon" for flag -timeout`},
		{[]string{"--insecure", "n2", "n3"}, `unexpected arguments ["n3"] after the ID n2`},
	} {
		err := runRemove(t.Context(), tc.args, &bytes.Buffer{})
		if _, ok := errors.AsType[*usageError](err); !ok || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("leasehold remove %q: %v; want a usage error saying %q", tc.args, err, tc.says)
		}
	}
}
