package main

import (
	"context"
	"io"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// goFieldName matches a Go field name of cluster.Config, GossipConfig or
// transport.GuardConfig as their errors give it.
var goFieldName = regexp.MustCompile(`\b(Gossip\.\w+|[A-Z][a-z]+[A-Z]\w*|Peers)\b`)

// TestServeConfigErrorsNameFlags: serve refuses a bad flag value naming the
// flag typed. Regression: it named the Go field the flag sets
// ("cluster config: Gossip.DeadServerTimeout is 10ms", "HeartbeatTimeout
// is 1ms", "Peers does not list this node's ID").
func TestServeConfigErrorsNameFlags(t *testing.T) {
	const raft = "127.0.0.1:17202"
	gossip := []string{"--gossip-addr", "127.0.0.1:17402"}
	// Cancelled: a start the test did not mean stops at once.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for _, tc := range []struct {
		args []string
		says []string
	}{
		{[]string{"--peers", "n1=" + raft, "--heartbeat-timeout", "1ms"},
			[]string{"--heartbeat-timeout is 1ms; it must be at least 5ms", "--leader-lease-timeout 250ms is above --heartbeat-timeout 1ms"}},
		{[]string{"--peers", "n1=" + raft, "--election-timeout", "100ms"}, []string{"--election-timeout 100ms is below --heartbeat-timeout 500ms"}},
		{[]string{"--peers", "n1=" + raft, "--leader-lease-timeout", "-1s"}, []string{"--leader-lease-timeout is -1s; it must not be negative"}},
		{[]string{"--peers", "n2=" + raft}, []string{`--peers does not list this node's ID "n1"`}},
		{[]string{"--peers", "n1=127.0.0.1:1"}, []string{`--peers lists this node ("n1") at "127.0.0.1:1" but --raft-addr is "` + raft + `"`}},
		{[]string{"--peers", "n1=" + raft + ",n1=127.0.0.1:1"}, []string{`--peers: "n1" is listed twice`}},
		{[]string{"--peers", "n1=" + raft + ",n2=127.0.0.1:0"}, []string{`--peers: "n2" at "127.0.0.1:0": no port`}},
		{[]string{"--peers", "n1=" + raft + ",n2=127.0.0.1:1,n3=127.0.0.1:1"}, []string{`--peers: "n3" at "127.0.0.1:1" is listed twice`}},
		{[]string{"--peers", "n1=" + raft, "--raft-dial", "n2=x"}, []string{`--raft-dial n2="x": address x: missing port`}},
		{append([]string{"--bootstrap-expect", "-1"}, gossip...), []string{"--bootstrap-expect is -1"}},
		{append([]string{"--bootstrap-expect", "3", "--peers", "n1=" + raft}, gossip...),
			[]string{"--bootstrap-expect and --peers exclude each other"}},
		{append([]string{"--dead-server-timeout", "10ms"}, gossip...), []string{"--dead-server-timeout is 10ms; it must be at least 1s"}},
		{append([]string{"--server-stabilization-time", "-1s"}, gossip...), []string{"--server-stabilization-time is -1s"}},
		{append([]string{"--gossip-advertise", "x"}, gossip...), []string{`--gossip-advertise "x" (or --gossip-addr): address x: missing port`}},
		{append([]string{"--join", "x"}, gossip...), []string{`--join "x": address x: missing port`}},
		{[]string{"--peers", "n1=" + raft, "--max-in-flight", "-1"}, []string{"--max-in-flight -1 must be at least 1"}},
		{[]string{"--peers", "n1=" + raft, "--max-conns", "-1"}, []string{"--max-conns -1 must be at least 1"}},
		{[]string{"--peers", "n1=" + raft, "--max-keys", "-1"}, []string{"--max-keys is -1; it must not be negative"}},
		{[]string{"--peers", "n1=" + raft, "--max-sessions", "-5"}, []string{"--max-sessions is -5; it must not be negative"}},
	} {
		args := append([]string{"--id", "n1", "--data", filepath.Join(t.TempDir(), "n1"), "--insecure", "--log-level", "error",
			"--grpc-addr", "127.0.0.1:17102", "--raft-addr", raft}, tc.args...)
		err := runServe(ctx, args, io.Discard)
		if err == nil {
			t.Errorf("serve %q started", tc.args)
			continue
		}
		for _, says := range tc.says {
			if !strings.Contains(err.Error(), says) {
				t.Errorf("serve %q: %v\nwant it to say %q", tc.args, err, says)
			}
		}
		if f := goFieldName.FindString(err.Error()); f != "" {
			t.Errorf("serve %q: %v\nnames the field %s, not its flag", tc.args, err, f)
		}
	}
}
