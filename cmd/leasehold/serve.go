package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/leasehold/leasehold/cluster"
	"github.com/leasehold/leasehold/transport"
)

func runServe(ctx context.Context, args []string, _ io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	id := fs.String("id", "", "this node's id, one of --peers (required)")
	dir := fs.String("data", "", "data directory for the Raft log, stable store and snapshots (required)")
	grpcAddr := fs.String("grpc-addr", "127.0.0.1:7101", "address for the client API")
	raftAddr := fs.String("raft-addr", "127.0.0.1:7201", "address for Raft traffic")
	peers := fs.String("peers", "", "initial cluster: id=raft-addr,... including this node (required)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	stopTimeout := fs.Duration("stop-timeout", 10*time.Second, "how long a graceful stop may take")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := newLogger(*logLevel)
	if err != nil {
		return err
	}
	cfg := cluster.DefaultConfig()
	cfg.ID, cfg.Dir, cfg.RaftAddr, cfg.Logger = *id, *dir, *raftAddr, log
	if cfg.Peers, err = parsePeers(*peers); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}

	lis, err := net.Listen("tcp", *grpcAddr)
	if err != nil {
		return fmt.Errorf("listen for clients: %w", err)
	}
	node, err := cluster.Open(ctx, cfg)
	if err != nil {
		lis.Close()
		return err
	}
	srv := grpc.NewServer()
	transport.Register(srv, node)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	log.Info("serving", "id", cfg.ID, "grpc", lis.Addr().String(), "raft", cfg.RaftAddr)

	select {
	case <-ctx.Done():
	case err = <-served:
		log.Error("client API stopped", "err", err)
	}
	// Stop: hand leadership over and close the stores cleanly, then stop
	// answering clients. Clients still connected see NotLeader and move on.
	stopCtx, cancel := context.WithTimeout(context.Background(), *stopTimeout)
	defer cancel()
	closeErr := node.Close(stopCtx)
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-stopCtx.Done():
		srv.Stop()
	}
	log.Info("stopped", "id", cfg.ID)
	if closeErr != nil {
		return closeErr
	}
	return err
}

// parsePeers parses "n1=127.0.0.1:7201,n2=127.0.0.1:7202".
func parsePeers(s string) ([]cluster.Peer, error) {
	var peers []cluster.Peer
	for _, p := range splitList(s) {
		id, addr, ok := strings.Cut(p, "=")
		if !ok || id == "" || addr == "" {
			return nil, fmt.Errorf("--peers: %q is not id=host:port", p)
		}
		peers = append(peers, cluster.Peer{ID: id, RaftAddr: addr})
	}
	return peers, nil
}
