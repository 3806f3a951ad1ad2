package cluster

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestResolveIDIsGeneratedOnceAndKept(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	id, err := ResolveID(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(id, "node-") || len(id) != len("node-")+16 {
		t.Fatalf("generated id %q, want node-<16 hex>", id)
	}
	if _, err := KeepID(dir, id); err != nil {
		t.Fatal(err)
	}
	again, err := ResolveID(dir, "")
	if err != nil || again != id {
		t.Fatalf("second resolve = %q, %v; want the kept %q", again, err, id)
	}
	if same, err := ResolveID(dir, id); err != nil || same != id {
		t.Fatalf("resolve with the kept id = %q, %v", same, err)
	}
	if _, err := ResolveID(dir, "n9"); !errors.Is(err, ErrIDMismatch) {
		t.Fatalf("resolve with another id: %v, want ErrIDMismatch", err)
	}
	if _, err := KeepID(dir, "n9"); !errors.Is(err, ErrIDMismatch) {
		t.Fatalf("keep another id: %v, want ErrIDMismatch", err)
	}
	other, err := ResolveID(filepath.Join(t.TempDir(), "other"), "")
	if err != nil || other == id {
		t.Fatalf("another directory's id = %q, %v; want a new one", other, err)
	}
}

func TestResolveIDKeepsAGivenID(t *testing.T) {
	dir := t.TempDir()
	if id, err := ResolveID(dir, "n1"); err != nil || id != "n1" {
		t.Fatalf("resolve n1 = %q, %v", id, err)
	}
	if _, err := KeepID(dir, "n1"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, idFile))
	if err != nil || strings.TrimSpace(string(b)) != "n1" {
		t.Fatalf("node-id file = %q, %v", b, err)
	}
	if id, err := ResolveID(dir, ""); err != nil || id != "n1" {
		t.Fatalf("resolve without an id = %q, %v; want the kept n1", id, err)
	}
}

// TestResolveIDWritesNothing: ResolveID wrote node-id (and made the data
// directory) as it resolved, so serve --id n2 --tls-cert node-n1.pem, refused
// for its certificate, left n2 in node-id, and the corrected start was then
// refused as another node's. Only KeepID writes.
func TestResolveIDWritesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	for _, given := range []string{"n2", ""} {
		if _, err := ResolveID(dir, given); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("ResolveID(%q) made the data directory (or %v)", given, err)
		}
	}
	// And what KeepID made, its undo removes, for a start refused after it.
	undo, err := KeepID(dir, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if err := undo(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("KeepID's undo left the data directory it made (or %v)", err)
	}
}

func TestGossipConfigValidate(t *testing.T) {
	key := make([]byte, 32)
	for _, tc := range []struct {
		name  string
		g     GossipConfig
		tls   bool
		peers bool
		want  []string
	}{
		{name: "ok", g: GossipConfig{BindAddr: "127.0.0.1:7301", Keys: [][]byte{key}}, tls: true},
		{name: "insecure plain text", g: GossipConfig{BindAddr: "127.0.0.1:7301", Insecure: true}, tls: true},
		{name: "every problem at once", tls: true, peers: true,
			g: GossipConfig{BindAddr: "0.0.0.0:7301", Join: []string{"nope"}, BootstrapExpect: 3,
				Keys: [][]byte{make([]byte, 10)}, DeadServerTimeout: time.Millisecond, StabilizationTime: -1},
			want: []string{"AdvertiseAddr", "Join[0]", "exclude each other", "Keys[0] is 10 bytes", "DeadServerTimeout", "StabilizationTime"}},
		{name: "TLS without a key", g: GossipConfig{BindAddr: "127.0.0.1:7301"}, tls: true, want: []string{"Keys is empty while Raft runs over TLS"}},
		{name: "no bind address", g: GossipConfig{}, want: []string{"BindAddr is empty"}},
		{name: "a version too long to gossip", g: GossipConfig{BindAddr: "127.0.0.1:7301", Insecure: true, Version: strings.Repeat("v", 65)},
			want: []string{"Version is 65 bytes; at most 64"}},
		// Followers named the leader at 0.0.0.0 (serve --grpc-addr 0.0.0.0:7101),
		// which a client elsewhere dials as itself.
		{name: "unspecified served addresses", g: GossipConfig{BindAddr: "127.0.0.1:7301", Insecure: true,
			ClientAddr: "0.0.0.0:7101", HTTPAddr: ":7201"}, want: []string{`ClientAddr "0.0.0.0:7101"`, `HTTPAddr ":7201"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := tc.g.validate(tc.tls, tc.peers)
			var all []string
			for _, e := range errs {
				all = append(all, e.Error())
			}
			joined := strings.Join(all, "\n")
			if len(tc.want) == 0 && len(errs) > 0 {
				t.Fatalf("unexpected problems:\n%s", joined)
			}
			for _, w := range tc.want {
				if !strings.Contains(joined, w) {
					t.Errorf("missing %q in:\n%s", w, joined)
				}
			}
		})
	}
}
