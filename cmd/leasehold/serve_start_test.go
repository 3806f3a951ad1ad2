package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/loopback"
)

// TestRefusedServeWritesNothing: serve --id n2 --tls-cert node-n1.pem was
// refused for the certificate, but only after it had written n2 into
// <data>/node-id, so the corrected start was refused as another node's
// ("node-id holds "n2", but this node was given "n1""). The configuration
// is checked before anything is written, and the refusal names the flags.
func TestRefusedServeWritesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	mustCerts(t, "ca", "--dir", dir)
	mustCerts(t, "node", "--dir", dir, "n1")
	mustCerts(t, "operator", "--dir", dir, "op")
	data := filepath.Join(t.TempDir(), "x4")
	for _, tc := range []struct {
		cert string
		args []string
		want string
	}{
		{"node-n1", []string{"--id", "n2"}, `--tls-cert names node "n1" but --id is "n2"`},
		{"operator-op", nil, "--tls-cert is operator/op's certificate; a node needs a node certificate"},
	} {
		err := runServe(context.Background(), append([]string{"--data", data, "--log-level", "error",
			"--grpc-addr", "127.0.0.1:1", "--raft-addr", "127.0.0.1:2", "--peers", "n1=127.0.0.1:2",
			"--tls-ca", dir + "/ca.pem", "--tls-cert", dir + "/" + tc.cert + ".pem", "--tls-key", dir + "/" + tc.cert + "-key.pem"},
			tc.args...), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("serve %v with %s: %v; want an error saying %q", tc.args, tc.cert, err, tc.want)
		}
		if _, err := os.Stat(data); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("serve %v with %s was refused but made --data (%v)", tc.args, tc.cert, err)
		}
	}
}

// TestServeRefusedForItsDirectoryWritesNothing: serve refused a data
// directory whose raft.db had been deleted, but only after it had made a
// fresh raft.db there (and a wal/ if that was gone too), which changed
// what the next start found. A refused start leaves the directory as it
// was.
func TestServeRefusedForItsDirectoryWritesNothing(t *testing.T) {
	ports, err := loopback.StablePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(t.TempDir(), "n1")
	grpcAddr, raftAddr := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
	args := []string{"--id", "n1", "--data", data, "--grpc-addr", grpcAddr, "--raft-addr", raftAddr, "--peers", "n1=" + raftAddr,
		"--insecure", "--log-level", "error", "--heartbeat-timeout", "50ms", "--election-timeout", "50ms", "--leader-lease-timeout", "50ms"}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- runServe(ctx, args, nil) }()
	deadline := time.Now().Add(30 * time.Second)
	for runStatus(context.Background(), []string{"--endpoints", grpcAddr, "--insecure", "--timeout", "2s"}, io.Discard) != nil {
		if time.Now().After(deadline) {
			t.Fatal("the node did not answer within 30s")
		}
		time.Sleep(100 * time.Millisecond) // polling a starting node, with a deadline
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("serve: %v", err)
	}

	for _, gone := range []string{"raft.db", "wal"} {
		if err := os.RemoveAll(filepath.Join(data, gone)); err != nil {
			t.Fatal(err)
		}
		before := names(t, data)
		err := runServe(context.Background(), args, nil)
		if err == nil || !strings.Contains(err.Error(), "raft.db") {
			t.Fatalf("serve without %s: %v; want a refusal about raft.db", gone, err)
		}
		if after := names(t, data); !slices.Equal(after, before) {
			t.Errorf("serve without %s was refused (%v) but left %v; it found %v", gone, err, after, before)
		}
	}
}

// names returns the names in dir, sorted.
func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}
