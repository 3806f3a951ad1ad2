package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/leasehold/leasehold/cluster"
	"github.com/leasehold/leasehold/internal/chaosclock"
	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/transport"
)

func runServe(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	id := fs.String("id", "", "this node's id (default: the one its TLS certificate names, else the one kept in --data, else a new one, kept there)")
	dir := fs.String("data", "", "data directory for the Raft log, stable store and snapshots (required)")
	grpcAddr := fs.String("grpc-addr", "127.0.0.1:7101", "address for the client API")
	grpcAdvertise := fs.String("grpc-advertise", "", "host:port clients reach --grpc-addr at, gossiped so that followers "+
		"redirect to the leader's (needs --gossip-addr; default: --grpc-addr, or, if its host is 0.0.0.0 or ::, "+
		"--raft-addr's host with --grpc-addr's port)")
	raftAddr := fs.String("raft-addr", "127.0.0.1:7201", "address for Raft traffic")
	peers := fs.String("peers", "", "static initial cluster: id=raft-addr,... including this node (required without --gossip-addr)")
	raftDial := fs.String("raft-dial", "", "dial these peers at these addresses instead of their --peers address: id=host:port,... (a proxy, NAT)")
	heartbeat := fs.Duration("heartbeat-timeout", cluster.DefaultHeartbeatTimeout, "how long a follower waits for the leader before an election")
	election := fs.Duration("election-timeout", cluster.DefaultElectionTimeout, "how long a candidate waits before a new election")
	leaderLease := fs.Duration("leader-lease-timeout", cluster.DefaultLeaderLeaseTimeout, "how long a leader stays leader without hearing from a quorum")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	stopTimeout := fs.Duration("stop-timeout", 10*time.Second, "how long a graceful stop may take")
	replace := fs.Bool("replace", false, "start with an empty --data as a fresh replacement: never bootstrap, "+
		"join the cluster that --peers already formed (ignored when --data holds Raft state)")
	sec := addServeSecurityFlags(fs)
	gos := addGossipFlags(fs)
	web := addServeHTTPFlags(fs)
	maxConns := fs.Int("max-conns", 0, "most client connections held open past their TLS handshake; one more is closed as its handshake ends (default: from the file-descriptor limit)")
	maxInFlight := fs.Int("max-in-flight", transport.DefaultMaxInFlight, "most client requests served at once; more are answered RESOURCE_EXHAUSTED with a retry hint")
	maxKeys := fs.Int("max-keys", cluster.DefaultMaxKeys, "most keys the cluster holds; as the leader, refuse a request "+
		"naming a new key beyond them (RESOURCE_EXHAUSTED); set the same on every node")
	maxSessions := fs.Int("max-sessions", cluster.DefaultMaxSessions, "most client sessions (client_ids heard from in the last "+
		"10 minutes) the cluster holds; as the leader, refuse a request from a new client_id beyond them; set the same on every node")
	inlineLimits := addInlineLimitsFlag(fs)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "usage: leasehold serve --data DIR [flags]\n\n"+
			"SIGINT, SIGTERM and SIGHUP stop the node gracefully: with --leave-on-terminate it asks the leader to remove it, "+
			"then it hands leadership over, closes its stores and stops answering clients, within --stop-timeout.\n\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	log, err := newLogger(*logLevel)
	if err != nil {
		return err
	}
	listen := []string{*grpcAddr, *raftAddr}
	if *gos.addr != "" {
		listen = append(listen, *gos.addr) // gossip carries leaves and removal notices
	}
	src, err := sec.source(log, listen...)
	if err != nil {
		return err
	}
	gcfg := transport.DefaultGuardConfig()
	gcfg.Logger = log
	if *maxConns != 0 {
		gcfg.MaxConns = *maxConns
	}
	gcfg.MaxInFlight = *maxInFlight
	if !*inlineLimits {
		gcfg.ClientInlineLimits = transport.InlineLimitsRefuse
	}
	if src != nil {
		gcfg.TLS = src.ServerConfig(nil)
	}
	guard, err := transport.NewGuard(gcfg)
	if err != nil {
		return withFlagNames(err)
	}
	face, err := web.listen(src, *sec.allowRemote)
	if err != nil {
		return err
	}
	defer face.close(context.Background())
	cfg := cluster.DefaultConfig()
	if face != nil {
		cfg.Metrics = face.reg
	}
	cfg.TLS = src
	if *dir == "" {
		return errors.New("--data is required")
	}
	if err := checkNodeCert(src, *id); err != nil {
		return err
	}
	given := *id
	if given == "" && src != nil {
		given = src.Identity().Name // with TLS the certificate names the node
	}
	nodeID, err := cluster.ResolveID(*dir, given)
	if err != nil {
		return err
	}
	cfg.ID, cfg.Dir, cfg.RaftAddr, cfg.Logger = nodeID, *dir, *raftAddr, log
	// Gossip tells the other members where this node serves clients and
	// HTTP: addresses they can dial.
	clientAddr, httpAddr := *grpcAddr, ""
	switch {
	case *grpcAdvertise != "" && *gos.addr == "":
		return errors.New("--grpc-advertise needs --gossip-addr (the client address is advertised in gossip)")
	case *grpcAdvertise != "":
		if err := checkNamedHost(*grpcAdvertise); err != nil {
			return fmt.Errorf("--grpc-advertise %q: %w", *grpcAdvertise, err)
		}
		clientAddr = *grpcAdvertise
	case *gos.addr != "":
		if clientAddr, err = advertisedAddr("--grpc-addr", *grpcAddr, *raftAddr); err != nil {
			return err
		}
	}
	if *gos.addr != "" {
		if httpAddr, err = face.advertised(*raftAddr); err != nil {
			return err
		}
	}
	if cfg.Gossip, err = gos.config(fs, log, clientAddr, httpAddr, src != nil); err != nil {
		return err
	}
	cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = *heartbeat, *election, *leaderLease
	cfg.Replace = *replace
	cfg.MaxKeys, cfg.MaxSessions = *maxKeys, *maxSessions
	if cfg.Peers, err = parsePeers(*peers); err != nil {
		return err
	}
	if cfg.DialAddrs, err = parseDialAddrs(*raftDial); err != nil {
		return err
	}
	if chaosclock.Enabled {
		// A test build: log time follows the chaos harness's clock knob.
		cfg.Monotonic = chaosclock.Monotonic
		log.Warn("chaos clock knob built in: not a release build")
	}
	if err := cfg.Validate(); err != nil {
		return withFlagNames(err)
	}
	// Only a start whose configuration holds writes to the data directory,
	// and one its state refuses leaves nothing there.
	forgetID, err := cluster.KeepID(*dir, nodeID)
	if err != nil {
		return err
	}

	lis, err := net.Listen("tcp", *grpcAddr)
	if err != nil {
		return fmt.Errorf("listen for clients: %w", err)
	}
	node, err := cluster.Open(ctx, cfg)
	if err != nil {
		lis.Close()
		if _, refused := errors.AsType[*cluster.StateError](err); refused {
			if ferr := forgetID(); ferr != nil {
				log.Warn("remove the node-id this refused start wrote", "err", ferr)
			}
		}
		return err
	}
	srv := grpc.NewServer(append(transport.ServerOptions(), guard.ServerOptions()...)...)
	transport.Register(srv, node)
	served := make(chan error, 2)
	go func() { served <- srv.Serve(guard.Listener(lis)) }()
	if face != nil {
		if err := face.start(web, node, guard, src, log, served); err != nil {
			srv.Stop()
			node.Close(context.Background())
			return err
		}
	}
	log.Info("serving", "id", cfg.ID, "gossip", node.GossipAddr(), "grpc", lis.Addr().String(), "grpc_advertised", clientAddr,
		"raft", cfg.RaftAddr, "tls", src != nil,
		"max_conns", guard.Config().MaxConns, "max_in_flight", guard.Config().MaxInFlight,
		"client_inline_limits", guard.Config().ClientInlineLimits.String())

	select {
	case <-ctx.Done():
	case err = <-served:
		log.Error("client API stopped", "err", err)
	}
	// Stop: leave if asked (the leader removes this node), hand leadership
	// over and close the stores cleanly, then stop answering clients.
	// Clients still connected see NotLeader and move on.
	if *gos.leave && ctx.Err() != nil {
		leaveOnTerminate(node, log, *stopTimeout/2)
	}
	stopCtx, cancel := context.WithTimeout(context.Background(), *stopTimeout)
	defer cancel()
	face.close(stopCtx)
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

// parseDialAddrs parses --raft-dial, "n2=127.0.0.1:9002,n3=127.0.0.1:9003";
// "" is none. An id may be listed once.
func parseDialAddrs(s string) (map[string]string, error) {
	peers, err := parseIDAddrs("--raft-dial", s)
	if err != nil || len(peers) == 0 {
		return nil, err
	}
	out := make(map[string]string, len(peers))
	for _, p := range peers {
		if _, dup := out[p.ID]; dup {
			return nil, fmt.Errorf("--raft-dial: %q is listed twice", p.ID)
		}
		out[p.ID] = p.RaftAddr
	}
	return out, nil
}

// parsePeers parses --peers, "n1=127.0.0.1:7201,n2=127.0.0.1:7202";
// cluster.Config.Validate checks the list itself.
func parsePeers(s string) ([]cluster.Peer, error) { return parseIDAddrs("--peers", s) }

// parseIDAddrs parses a comma-separated list of id=host:port for flag.
func parseIDAddrs(flag, s string) ([]cluster.Peer, error) {
	var out []cluster.Peer
	for _, p := range splitList(s) {
		id, addr, ok := strings.Cut(p, "=")
		if !ok || id == "" || addr == "" {
			return nil, fmt.Errorf("%s: %q is not id=host:port", flag, p)
		}
		out = append(out, cluster.Peer{ID: id, RaftAddr: addr})
	}
	return out, nil
}

// addInlineLimitsFlag defines --client-inline-limits, for serve and, passed
// on to every node, for cluster: one default and one help text.
func addInlineLimitsFlag(fs *flag.FlagSet) *bool {
	return fs.Bool("client-inline-limits", true, "let a client certificate's Acquire, Charge and Restrict define the limit of a key "+
		"that has none from the limit sent inline (the SDK's Limiter and Budget send one); false: such a call is PERMISSION_DENIED "+
		"and only an operator's SetLimit defines limits. An inline limit never changes a key that has one")
}

// checkNodeCert checks, before anything is written, that the certificate
// of serve --tls-cert is a node's, and the node's that --id names if given.
func checkNodeCert(src *pki.Source, id string) error {
	if src == nil {
		return nil
	}
	switch cert := src.Identity(); {
	case cert.Role != pki.RoleNode:
		return fmt.Errorf("--tls-cert is %s's certificate; a node needs a node certificate (leasehold certs node ID)", cert)
	case id != "" && cert.Name != id:
		return fmt.Errorf("--tls-cert names node %q but --id is %q: pass --id %s (or leave it out), "+
			"or the certificate of node %s (leasehold certs node %s)", cert.Name, id, cert.Name, id, id)
	}
	return nil
}

// advertisedAddr returns the address the node gossips for its listener
// bound at bind (named by flag): bind, unless its host is unspecified
// (0.0.0.0, :: or none: every interface), which a peer or client elsewhere
// would dial as itself; then --raft-addr's host, which peers dial already,
// with bind's port.
func advertisedAddr(flag, bind, raftAddr string) (string, error) {
	host, port, err := net.SplitHostPort(bind)
	if err != nil {
		return "", fmt.Errorf("%s %q: %w", flag, bind, err)
	}
	if !isUnspecified(host) {
		return bind, nil
	}
	raftHost, _, err := net.SplitHostPort(raftAddr)
	if err != nil || isUnspecified(raftHost) {
		return "", fmt.Errorf("%s %q listens on every interface, and --raft-addr %q names no host to advertise instead", flag, bind, raftAddr)
	}
	return net.JoinHostPort(raftHost, port), nil
}

// checkNamedHost checks that addr is a host:port whose host names one
// machine.
func checkNamedHost(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	switch {
	case err != nil:
		return err
	case isUnspecified(host):
		return errors.New("its host is unspecified (every interface), which no other machine can dial; give the host others reach it at")
	}
	return nil
}

// isUnspecified reports whether host, of a host:port, stands for every
// interface: empty, 0.0.0.0 or ::.
func isUnspecified(host string) bool {
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}
