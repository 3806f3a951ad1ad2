package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/leasehold/leasehold/cluster"
	"github.com/leasehold/leasehold/internal/buildinfo"
	"github.com/leasehold/leasehold/internal/pki"
)

// gossipFlags are serve's membership flags.
type gossipFlags struct {
	addr, advertise, join, clusterName, keyFile *string
	expect                                      *int
	nonVoter, leave                             *bool
	deadTimeout, stabilize                      *time.Duration
}

func addGossipFlags(fs *flag.FlagSet) *gossipFlags {
	return &gossipFlags{
		addr:        fs.String("gossip-addr", "", "host:port to gossip on (memberlist, TCP and UDP); turns membership on: discovery, failure detection, join, autopilot"),
		advertise:   fs.String("gossip-advertise", "", "host:port other members reach --gossip-addr at (default: --gossip-addr)"),
		join:        fs.String("join", "", "gossip addresses of members to join, comma-separated; retried with backoff; safe to give on every start (needs --gossip-addr)"),
		expect:      fs.Int("bootstrap-expect", 0, "bootstrap a new cluster once this many empty nodes with the same value and --cluster-name have met (needs --gossip-addr; excludes --peers)"),
		clusterName: fs.String("cluster-name", cluster.DefaultClusterName, "the cluster's name; members with another one are not admitted"),
		keyFile:     fs.String("gossip-key-file", "", "gossip keyring: base64 keys, one a line, the first encrypts (made by leasehold certs gossip-key); required with TLS"),
		nonVoter:    fs.Bool("non-voter", false, "ask never to be promoted to voter: replicate only"),
		leave:       fs.Bool("leave-on-terminate", false, "on SIGTERM, ask the leader to remove this node before stopping (a graceful leave)"),
		deadTimeout: fs.Duration("dead-server-timeout", cluster.DefaultDeadServerTimeout, "how long a voter must be dead before the leader removes it (within failure tolerance)"),
		stabilize:   fs.Duration("server-stabilization-time", cluster.DefaultStabilizationTime, "how long a new node must stay healthy before it is promoted to voter"),
	}
}

// config returns the node's GossipConfig, nil when --gossip-addr is not
// given (then the other membership flags must not be either). clientAddr
// and httpAddr are gossiped for the other members to find this node's
// client API and HTTP face (the console) by; httpAddr is "" without one.
// tls says whether the node serves TLS: then a gossip key is required;
// insecure plain-text gossip is allowed only with serve --insecure.
func (g *gossipFlags) config(fs *flag.FlagSet, log *slog.Logger, clientAddr, httpAddr string, tls bool) (*cluster.GossipConfig, error) {
	if *g.addr == "" {
		for _, name := range []string{"gossip-advertise", "join", "bootstrap-expect", "gossip-key-file", "non-voter", "leave-on-terminate"} {
			if isSet(fs, name) {
				return nil, fmt.Errorf("--%s needs --gossip-addr (membership is off without it)", name)
			}
		}
		return nil, nil
	}
	c := &cluster.GossipConfig{
		BindAddr: *g.addr, AdvertiseAddr: *g.advertise, Join: splitList(*g.join), BootstrapExpect: *g.expect,
		ClusterName: *g.clusterName, ClientAddr: clientAddr, HTTPAddr: httpAddr, NonVoter: *g.nonVoter, Version: buildinfo.Read().Version,
		DeadServerTimeout: *g.deadTimeout, StabilizationTime: *g.stabilize,
	}
	switch {
	case *g.keyFile != "":
		warnUnprotectedKey(log, "--gossip-key-file", *g.keyFile)
		keys, err := pki.ReadGossipKeys(*g.keyFile)
		if err != nil {
			return nil, err
		}
		c.Keys = keys
	case tls:
		return nil, errors.New("--gossip-key-file is required with TLS: gossip must be encrypted too (`leasehold certs gossip-key` makes one)")
	default:
		c.Insecure = true
		log.Warn("INSECURE: gossip in plain text (no --gossip-key-file): anyone who reaches --gossip-addr can read and forge membership messages")
	}
	return c, nil
}

// leaveOnTerminate asks the leader to remove node before it stops, bounded
// by timeout; it logs what happened.
func leaveOnTerminate(node *cluster.Node, log *slog.Logger, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	log.Info("leaving the cluster (--leave-on-terminate)")
	if err := node.Leave(ctx); err != nil {
		log.Warn("leave", "err", err)
		return
	}
	log.Info("left the cluster: the leader removed this node")
}

// runGossipKey makes the gossip keyring file (`certs gossip-key`): a new
// random key in DIR/gossip.key, unless the file exists.
func runGossipKey(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("certs gossip-key", flag.ContinueOnError)
	dir := fs.String("dir", filepath.Join("data", "tls"), "directory of the keyring")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	path := filepath.Join(*dir, pki.GossipKeyFile)
	made, err := pki.WriteGossipKey(path)
	if err != nil {
		return err
	}
	if !made {
		return fmt.Errorf("%s exists; to roll a new key in, make one in another directory (leasehold certs gossip-key --dir DIR), "+
			"add its key line below the first in every node's keyring and restart each, then move it first and restart each, "+
			"then remove the old line (README, \"Operating a cluster\")", path)
	}
	fmt.Fprintf(stdout, "wrote %s (serve --gossip-key-file, on every node; keep it as secret as the node keys)\n", path)
	return nil
}
