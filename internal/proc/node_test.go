package proc_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/leasehold/leasehold/internal/proc"
)

func TestNodeSpecArgs(t *testing.T) {
	s := proc.NodeSpec{ID: "n2", Data: "/d/n2", ClientAddr: "127.0.0.1:7102", RaftAddr: "127.0.0.1:7202",
		Peers:    []proc.Peer{{"n1", "127.0.0.1:7201"}, {"n2", "127.0.0.1:7202"}},
		RaftDial: []proc.Peer{{"n1", "127.0.0.1:9001"}}, LogLevel: "debug",
		TLS:       &proc.TLSFiles{CA: "ca.pem", Cert: "node-n2.pem", Key: "node-n2-key.pem"},
		ExtraArgs: []string{"--election-timeout", "2s"}}
	want := []string{"serve", "--id", "n2", "--data", "/d/n2", "--grpc-addr", "127.0.0.1:7102", "--raft-addr", "127.0.0.1:7202",
		"--peers", "n1=127.0.0.1:7201,n2=127.0.0.1:7202", "--raft-dial", "n1=127.0.0.1:9001", "--log-level", "debug",
		"--tls-ca", "ca.pem", "--tls-cert", "node-n2.pem", "--tls-key", "node-n2-key.pem", "--election-timeout", "2s"}
	if diff := cmp.Diff(want, s.Args()); diff != "" {
		t.Errorf("Args (-want +got):\n%s", diff)
	}
	// Without TLS files, a node says it serves plain text: serve refuses
	// to start with neither.
	bare := proc.NodeSpec{ID: "n1", Data: "d", ClientAddr: "a:1", RaftAddr: "a:2"}
	if diff := cmp.Diff([]string{"serve", "--id", "n1", "--data", "d", "--grpc-addr", "a:1", "--raft-addr", "a:2", "--insecure"}, bare.Args()); diff != "" {
		t.Errorf("Args without optional flags (-want +got):\n%s", diff)
	}
}

func TestLayoutFixedPorts(t *testing.T) {
	specs, err := proc.Layout{Nodes: 2, Dir: "/data", LogDir: "/logs", BasePort: 7100, LogLevel: "info", Insecure: true,
		ExtraArgs: func(s proc.NodeSpec) []string { return []string{"--x=" + s.ID} }}.Specs()
	if err != nil {
		t.Fatal(err)
	}
	peers := []proc.Peer{{"n1", "127.0.0.1:7201"}, {"n2", "127.0.0.1:7202"}}
	want := []proc.NodeSpec{
		{ID: "n1", Data: "/data/n1", ClientAddr: "127.0.0.1:7101", RaftAddr: "127.0.0.1:7201", Peers: peers, LogLevel: "info",
			ExtraArgs: []string{"--x=n1"}, Options: proc.Options{Log: "/logs/n1.log"}},
		{ID: "n2", Data: "/data/n2", ClientAddr: "127.0.0.1:7102", RaftAddr: "127.0.0.1:7202", Peers: peers, LogLevel: "info",
			ExtraArgs: []string{"--x=n2"}, Options: proc.Options{Log: "/logs/n2.log"}},
	}
	if diff := cmp.Diff(want, specs); diff != "" {
		t.Errorf("specs (-want +got):\n%s", diff)
	}
	specs[0].Peers[0].Addr = "changed"
	if specs[1].Peers[0].Addr == "changed" {
		t.Error("specs share their Peers")
	}
}

func TestLayoutFreePorts(t *testing.T) {
	specs, err := proc.Layout{Nodes: 3, Dir: t.TempDir(), Insecure: true}.Specs()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, s := range specs {
		if s.TLS != nil {
			t.Errorf("%s: TLS files %v in an insecure layout", s.ID, s.TLS)
		}
		for _, a := range []string{s.ClientAddr, s.RaftAddr} {
			if !strings.HasPrefix(a, "127.0.0.1:") || seen[a] {
				t.Errorf("address %q: want distinct loopback addresses", a)
			}
			seen[a] = true
		}
	}
}

func TestLayoutValidateReportsEveryProblem(t *testing.T) {
	err := proc.Layout{Nodes: 0, BasePort: 65500, Host: "10.0.0.1"}.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"0 nodes", "Dir is empty", "base port 65500"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	err = proc.Layout{Nodes: 1, Dir: "d", Host: "10.0.0.1"}.Validate()
	if err == nil || !strings.Contains(err.Error(), "free ports") {
		t.Errorf("free ports on another host: %v", err)
	}
	err = proc.Layout{Nodes: 1, Dir: "d", Insecure: true, TLSDir: "d/tls"}.Validate()
	if err == nil || !strings.Contains(err.Error(), "TLSDir") {
		t.Errorf("TLSDir with Insecure: %v", err)
	}
	err = proc.ClusterConfig{Nodes: []proc.NodeSpec{{ID: "n1"}, {ID: "n1"}}}.Validate()
	for _, want := range []string{"Binary is empty", "Data is empty", "ClientAddr is empty", `"n1" twice`, "no transport security"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("cluster config error %v lacks %q", err, want)
		}
	}
}

// TestLayoutGossip: a gossip layout bootstraps from gossip (no --peers),
// each node joins every bootstrap node, and a spare joins without
// --bootstrap-expect.
func TestLayoutGossip(t *testing.T) {
	specs, err := proc.Layout{Nodes: 2, Spares: 1, Dir: "/data", BasePort: 7100, Insecure: true, Gossip: true}.Specs()
	if err != nil {
		t.Fatal(err)
	}
	if len(specs) != 3 {
		t.Fatalf("%d specs, want 2 nodes and a spare", len(specs))
	}
	want := [][]string{
		{"serve", "--id", "n1", "--data", "/data/n1", "--grpc-addr", "127.0.0.1:7101", "--raft-addr", "127.0.0.1:7201",
			"--gossip-addr", "127.0.0.1:7401", "--join", "127.0.0.1:7401,127.0.0.1:7402", "--bootstrap-expect", "2", "--insecure"},
		{"serve", "--id", "n2", "--data", "/data/n2", "--grpc-addr", "127.0.0.1:7102", "--raft-addr", "127.0.0.1:7202",
			"--gossip-addr", "127.0.0.1:7402", "--join", "127.0.0.1:7401,127.0.0.1:7402", "--bootstrap-expect", "2", "--insecure"},
		{"serve", "--id", "n3", "--data", "/data/n3", "--grpc-addr", "127.0.0.1:7103", "--raft-addr", "127.0.0.1:7203",
			"--gossip-addr", "127.0.0.1:7403", "--join", "127.0.0.1:7401,127.0.0.1:7402", "--insecure"},
	}
	for i, s := range specs {
		if diff := cmp.Diff(want[i], s.Args()); diff != "" {
			t.Errorf("%s Args (-want +got):\n%s", s.ID, diff)
		}
	}
	if _, err := (proc.Layout{Nodes: 2, Spares: 1, Dir: "/data"}).Specs(); err == nil {
		t.Error("spares without gossip: no error")
	}
}

// TestLayoutGossipHTTP: with gossip and HTTP, each node has both ports
// (HTTP on BasePort+200+i, gossip on BasePort+300+i) and no
// --console-peers: the consoles find each other in gossip. With free
// ports, no two addresses are the same.
func TestLayoutGossipHTTP(t *testing.T) {
	specs, err := proc.Layout{Nodes: 2, Spares: 1, Dir: "/data", BasePort: 7100, Insecure: true, Gossip: true, HTTP: true}.Specs()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"serve", "--id", "n3", "--data", "/data/n3", "--grpc-addr", "127.0.0.1:7103", "--raft-addr", "127.0.0.1:7203",
		"--gossip-addr", "127.0.0.1:7403", "--join", "127.0.0.1:7401,127.0.0.1:7402", "--http-addr", "127.0.0.1:7303", "--insecure"}
	if diff := cmp.Diff(want, specs[2].Args()); diff != "" {
		t.Errorf("spare's Args (-want +got):\n%s", diff)
	}
	for _, s := range specs {
		if len(s.ConsolePeers) != 0 || len(s.Peers) != 0 {
			t.Errorf("%s: console peers %v, peers %v with gossip", s.ID, s.ConsolePeers, s.Peers)
		}
	}
	free, err := proc.Layout{Nodes: 2, Spares: 1, Dir: t.TempDir(), Insecure: true, Gossip: true, HTTP: true}.Specs()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	for _, s := range free {
		for _, a := range []string{s.ClientAddr, s.RaftAddr, s.HTTPAddr, s.GossipAddr} {
			if a == "" || seen[a] != "" {
				t.Errorf("%s: address %q empty or also %s's", s.ID, a, seen[a])
			}
			seen[a] = s.ID
		}
	}
	if err := (proc.Layout{Nodes: 3, Dir: "d", BasePort: 65300, Gossip: true}).Validate(); err == nil {
		t.Error("a base port whose gossip ports pass 65535 is valid")
	}
}

func TestLayoutHTTP(t *testing.T) {
	specs, err := proc.Layout{Nodes: 3, Dir: "/data", BasePort: 7100, HTTP: true}.Specs()
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range specs {
		if want := fmt.Sprintf("127.0.0.1:%d", 7301+i); s.HTTPAddr != want {
			t.Errorf("%s HTTPAddr %q; want %q", s.ID, s.HTTPAddr, want)
		}
		if len(s.ConsolePeers) != 2 {
			t.Errorf("%s ConsolePeers %v; want the other two", s.ID, s.ConsolePeers)
		}
		for _, p := range s.ConsolePeers {
			if p.ID == s.ID {
				t.Errorf("%s lists itself among its console peers", s.ID)
			}
		}
	}
	args := strings.Join(specs[0].Args(), " ")
	if !strings.Contains(args, "--http-addr 127.0.0.1:7301 --console-peers n2=127.0.0.1:7302,n3=127.0.0.1:7303") {
		t.Errorf("args %q", args)
	}
	free, err := proc.Layout{Nodes: 2, Dir: t.TempDir(), HTTP: true}.Specs()
	if err != nil {
		t.Fatal(err)
	}
	if free[0].HTTPAddr == "" || free[0].HTTPAddr == free[1].HTTPAddr || free[0].HTTPAddr == free[0].ClientAddr {
		t.Errorf("free HTTP ports: %q, %q", free[0].HTTPAddr, free[1].HTTPAddr)
	}
	if err := (proc.Layout{Nodes: 3, Dir: "d", BasePort: 65400, HTTP: true}).Validate(); err == nil {
		t.Error("a base port whose HTTP ports pass 65535 is valid")
	}
}
