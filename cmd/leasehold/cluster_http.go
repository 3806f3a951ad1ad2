package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/leasehold/leasehold/internal/proc"
)

// printHTTP prints the nodes' metrics URLs and the leader's console URL,
// one line each:
//
//	metrics: http://127.0.0.1:7301/metrics,http://127.0.0.1:7302/metrics,...
//	console: http://127.0.0.1:7301/
//
// scheme is https when the nodes serve TLS.
func printHTTP(w io.Writer, c *proc.Cluster, leader *proc.Node, scheme string) {
	var metrics []string
	for _, n := range c.Nodes() {
		if n.HTTPAddr() != "" {
			metrics = append(metrics, scheme+"://"+n.HTTPAddr()+"/metrics")
		}
	}
	if len(metrics) == 0 {
		return
	}
	fmt.Fprintf(w, "metrics: %s\n", strings.Join(metrics, ","))
	if leader != nil && leader.HTTPAddr() != "" {
		fmt.Fprintf(w, "console: %s://%s/\n", scheme, leader.HTTPAddr())
	}
}

// printGossip prints the nodes' gossip addresses on w, the addresses a new
// node joins (serve --join), and says on log how the cluster's membership
// works:
//
//	gossip: 127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403
//
// specs are the nodes'; nothing is printed for nodes without gossip.
func printGossip(w, log io.Writer, specs []proc.NodeSpec) {
	var seeds []string
	expect, key := 0, ""
	for _, s := range specs {
		if s.GossipAddr == "" {
			continue
		}
		seeds = append(seeds, s.GossipAddr)
		expect, key = max(expect, s.BootstrapExpect), s.GossipKey
	}
	if len(seeds) == 0 {
		return
	}
	fmt.Fprintf(w, "gossip: %s\n", strings.Join(seeds, ","))
	how := "in plain text"
	if key != "" {
		how = "encrypted with " + key
	}
	fmt.Fprintf(log, "membership: the nodes gossip %s and, on an empty --dir, bootstrap once %d of them have met (--bootstrap-expect %d); "+
		"a new node joins with serve --gossip-addr ... --join %s; `leasehold members` lists them\n",
		how, expect, expect, strings.Join(seeds, ","))
}
