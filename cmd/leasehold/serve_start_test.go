package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/loopback"
)

// gossipNode is a node serve runs in the test, over mutual TLS with
// membership on, and where it listens.
type gossipNode struct {
	tls                  string // the certificates' directory
	grpcPort             int
	raftAddr, gossipAddr string
}

// operator returns the CLI flags of the operator's certificate.
func (g gossipNode) operator() []string {
	return []string{"--ca", g.tls + "/ca.pem", "--cert", g.tls + "/operator-op.pem", "--key", g.tls + "/operator-op-key.pem"}
}

// serveGossipNode runs serve in-process, a one-node cluster bootstrapped by
// gossip, with its client port bound on bindHost, until the test ends; no
// --http-addr, which a process can serve only once (Raft's metrics).
// Mutual TLS: even on every interface, its ports answer no one without the
// test's CA.
func serveGossipNode(t *testing.T, bindHost string) gossipNode {
	t.Helper()
	g := gossipNode{tls: filepath.Join(t.TempDir(), "tls")}
	mustCerts(t, "ca", "--dir", g.tls)
	mustCerts(t, "node", "--dir", g.tls, "n1")
	mustCerts(t, "operator", "--dir", g.tls, "op")
	mustCerts(t, "gossip-key", "--dir", g.tls)
	ports, err := loopback.StablePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	g.grpcPort, g.raftAddr, g.gossipAddr = ports[0], fmt.Sprintf("127.0.0.1:%d", ports[1]), fmt.Sprintf("127.0.0.1:%d", ports[2])
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	args := []string{"--data", filepath.Join(t.TempDir(), "n1"),
		"--grpc-addr", net.JoinHostPort(bindHost, strconv.Itoa(g.grpcPort)), "--raft-addr", g.raftAddr,
		"--gossip-addr", g.gossipAddr, "--bootstrap-expect", "1", "--gossip-key-file", g.tls + "/gossip.key",
		"--log-level", "error", "--heartbeat-timeout", "50ms", "--election-timeout", "50ms", "--leader-lease-timeout", "50ms",
		"--tls-ca", g.tls + "/ca.pem", "--tls-cert", g.tls + "/node-n1.pem", "--tls-key", g.tls + "/node-n1-key.pem"}
	go func() { served <- runServe(ctx, args, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return g
}

// TestServeAdvertisesARoutableClientAddress: serve --grpc-addr
// 0.0.0.0:PORT gossiped 0.0.0.0:PORT as its client address, which members
// showed and followers handed out in NotLeader, so a CLI on another machine
// followed the redirect to itself. Bound to every interface, the node
// advertises --raft-addr's host with the gRPC port; --grpc-advertise says
// otherwise. (--http-addr the same: TestHTTPFaceAdvertisesARoutableAddress.)
func TestServeAdvertisesARoutableClientAddress(t *testing.T) {
	g := serveGossipNode(t, "0.0.0.0")
	args := append([]string{"--endpoints", fmt.Sprintf("127.0.0.1:%d", g.grpcPort), "--json", "--timeout", "2s"}, g.operator()...)
	want := fmt.Sprintf(`"client_addr":"127.0.0.1:%d"`, g.grpcPort)
	deadline := time.Now().Add(30 * time.Second)
	for {
		var out bytes.Buffer
		err := runMembers(context.Background(), args, &out)
		got := strings.ReplaceAll(out.String(), " ", "")
		if err == nil && strings.Contains(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("members within 30s: %v\n%s\nwant %s", err, out.String(), want)
		}
		time.Sleep(100 * time.Millisecond) // polling a starting node, with a deadline
	}
}

// TestHTTPFaceAdvertisesARoutableAddress: serve --http-addr 0.0.0.0:PORT
// gossiped 0.0.0.0:PORT for the other consoles, as --grpc-addr did. It
// advertises --raft-addr's host, and the port the listener took for port 0.
func TestHTTPFaceAdvertisesARoutableAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	for _, tc := range []struct{ addr, want string }{
		{"0.0.0.0:7301", "10.0.0.1:7301"},
		{"0.0.0.0:0", "10.0.0.1:" + port},
		{"127.0.0.1:0", "127.0.0.1:" + port},
	} {
		f := &httpFace{ln: ln, addr: tc.addr}
		if got, err := f.advertised("10.0.0.1:7201"); err != nil || got != tc.want {
			t.Errorf("--http-addr %s advertised as %q, %v; want %q", tc.addr, got, err, tc.want)
		}
	}
	if got, err := (*httpFace)(nil).advertised("10.0.0.1:7201"); err != nil || got != "" {
		t.Errorf("no HTTP face advertised as %q, %v; want nothing", got, err)
	}
}

// TestCLIAgainstTheGossipPort: leasehold status --endpoints at a node's
// gossip port (the "gossip:" line make cluster prints) said "hint: the node
// serves plain text (serve --insecure): pass --insecure", which is false:
// gossip answers a TLS hello with bytes that are not TLS, as a plain-text
// node does. The hint names both.
func TestCLIAgainstTheGossipPort(t *testing.T) {
	g := serveGossipNode(t, "127.0.0.1")
	// Once the node answers, gossip is up: Open starts it before it returns.
	deadline := time.Now().Add(30 * time.Second)
	for runStatus(context.Background(), append([]string{"--endpoints", fmt.Sprintf("127.0.0.1:%d", g.grpcPort), "--timeout", "2s"},
		g.operator()...), io.Discard) != nil {
		if time.Now().After(deadline) {
			t.Fatal("the node did not answer within 30s")
		}
		time.Sleep(100 * time.Millisecond) // polling a starting node, with a deadline
	}
	var out bytes.Buffer
	err := runStatus(context.Background(), append([]string{"--endpoints", g.gossipAddr, "--timeout", "2s"}, g.operator()...), &out)
	if err == nil || !strings.Contains(err.Error(), "not a client address (a gossip port?)") ||
		!strings.Contains(err.Error(), "serve --grpc-addr") {
		t.Errorf("status at the gossip port: %v; want a hint that it may be a gossip port, naming --grpc-addr\n%s", err, out.String())
	}
}

// TestServeAdvertiseFlagsRefuse: an advertised address must name a host,
// and --grpc-advertise means nothing without gossip.
func TestServeAdvertiseFlagsRefuse(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unspecified --grpc-advertise", []string{"--gossip-addr", "127.0.0.1:1", "--grpc-advertise", "0.0.0.0:7101"},
			`--grpc-advertise "0.0.0.0:7101": its host is unspecified`},
		{"--grpc-advertise without gossip", []string{"--grpc-advertise", "10.0.0.1:7101", "--peers", "n1=127.0.0.1:7201"},
			"--grpc-advertise needs --gossip-addr"},
	} {
		dir := filepath.Join(t.TempDir(), "n1")
		err := runServe(context.Background(), append([]string{"--id", "n1", "--data", dir, "--insecure", "--log-level", "error"},
			tc.args...), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want an error saying %q", tc.name, err, tc.want)
		}
	}
	for _, tc := range []struct{ bind, raft, want string }{
		{"127.0.0.1:7101", "127.0.0.1:7201", "127.0.0.1:7101"},
		{"0.0.0.0:7101", "10.0.0.1:7201", "10.0.0.1:7101"},
		{"[::]:7101", "[fd00::1]:7201", "[fd00::1]:7101"},
		{":7101", "10.0.0.1:7201", "10.0.0.1:7101"},
	} {
		if got, err := advertisedAddr("--grpc-addr", tc.bind, tc.raft); err != nil || got != tc.want {
			t.Errorf("advertisedAddr(%q, %q) = %q, %v; want %q", tc.bind, tc.raft, got, err, tc.want)
		}
	}
}

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
