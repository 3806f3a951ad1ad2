// Package clustertest runs a one-node Leasehold cluster in the test's own
// process (hashicorp/raft, the real log store and state machine, the gRPC
// client API), for the tests of the packages above package cluster.
package clustertest

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/leasehold/leasehold/cluster"
	"github.com/leasehold/leasehold/transport"
)

// Start runs a one-node cluster serving the client API in plain text on a
// free loopback port, and returns the node and its client endpoint once it
// leads. Raft's timeouts are 50 ms, so it leads at once. Everything stops
// when the test ends; a failure to close is the test's error.
func Start(t testing.TB) (*cluster.Node, string) {
	t.Helper()
	raftLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := cluster.DefaultConfig()
	cfg.ID, cfg.Dir, cfg.Listener = "n1", filepath.Join(t.TempDir(), "n1"), raftLn
	cfg.Peers = []cluster.Peer{{ID: "n1", RaftAddr: raftLn.Addr().String()}}
	cfg.RaftAddr = raftLn.Addr().String()
	cfg.Logger = slog.New(slog.DiscardHandler)
	cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = 50*time.Millisecond, 50*time.Millisecond, 50*time.Millisecond
	node, err := cluster.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = node.Close(context.Background())
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	transport.Register(srv, node)
	served := make(chan struct{})
	go func() { _ = srv.Serve(lis); close(served) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := node.Close(ctx); err != nil {
			t.Error(err)
		}
		srv.Stop()
		<-served
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := node.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	return node, lis.Addr().String()
}
