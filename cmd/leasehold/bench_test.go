package main

import (
	"bytes"
	"context"
	"io"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/leasehold/leasehold/internal/clustertest"
)

// startNode runs a one-node cluster in-process (clustertest), serving the
// client API on a free loopback port, and returns its endpoint once it
// leads.
func startNode(t *testing.T) string {
	t.Helper()
	_, endpoint := clustertest.Start(t)
	return endpoint
}

var (
	overRE     = regexp.MustCompile(`over-admitted (\d+)`)
	admittedRE = regexp.MustCompile(`(\d+) admitted, (\d+) allowed`)
	entriesRE  = regexp.MustCompile(`raft writes +(\d+) entries`)
	acquiresRE = regexp.MustCompile(`sdk requests +(\d+) acquires`)
	tokensRE   = regexp.MustCompile(`(\d+) tokens granted, (\d+) given back`)
)

func atoi(t *testing.T, re *regexp.Regexp, s string, group int) int64 {
	t.Helper()
	m := re.FindStringSubmatch(s)
	if m == nil {
		t.Fatalf("no %v in:\n%s", re, s)
	}
	n, err := strconv.ParseInt(m[group], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestBenchAgainstNode runs `leasehold bench` in both modes against an
// in-process node: it must admit tokens, stay within the envelope, count no
// admission the SDK got no token for, and see the Raft writes its SDK
// requests made.
//
// Regression (a loaded 2-core machine under -race, 13 of 180 runs with a
// chaos run beside it): it also wanted at least both bursts (40 tokens)
// admitted in the 400ms run. That is a throughput claim: the node's Raft
// commits took 22-56ms at the median and up to 360ms, so the 3 workers made
// 15-31 decisions in 400ms (central mode, and lease mode before its first
// leases), or held leases whose refresh was still in flight and denied
// locally (lease mode: 13304 decisions, 16 admitted, 49 of 65 granted tokens
// given back at close). What the run admits in a wall-clock window is the
// machine's; efficiency is judged where an election or a stall can be told
// apart (internal/e2e). Here the counts are checked against each other,
// which no machine speed changes: every admission spent a token the node
// granted (central mode: one each; lease mode: admitted and given back
// together at most what was granted).
func TestBenchAgainstNode(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a node")
	}
	ep := startNode(t)
	for _, mode := range []string{"lease", "central"} {
		t.Run(mode, func(t *testing.T) {
			var out bytes.Buffer
			err := runBench(context.Background(), []string{"--endpoints", ep, "--insecure", "--mode", mode, "--clients", "3",
				"--keys", "2", "--duration", "400ms", "--rate", "100", "--burst", "20"}, &out)
			s := out.String()
			t.Logf("bench output:\n%s", s) // shown with -v or on failure: a failure's numbers are never lost
			if err != nil {
				t.Fatalf("bench: %v", err)
			}
			if !strings.HasPrefix(s, "leasehold "+mode+": 3 clients, 2 keys") {
				t.Errorf("output does not start with the run's description")
			}
			if over := atoi(t, overRE, s, 1); over != 0 {
				t.Errorf("over-admitted %d", over)
			}
			admitted, allowed := atoi(t, admittedRE, s, 1), atoi(t, admittedRE, s, 2)
			if admitted < 1 || admitted > allowed {
				t.Errorf("admitted %d of %d allowed: want some and at most the envelope", admitted, allowed)
			}
			granted, givenBack := atoi(t, tokensRE, s, 1), atoi(t, tokensRE, s, 2)
			switch {
			case mode == "central" && admitted != granted:
				t.Errorf("central: %d admitted, %d tokens granted: want one granted token for each admission", admitted, granted)
			case admitted+givenBack > granted:
				t.Errorf("lease: %d admitted and %d given back, of %d tokens granted: admissions without a token", admitted, givenBack, granted)
			}
			if entries, acquires := atoi(t, entriesRE, s, 1), atoi(t, acquiresRE, s, 1); entries < 1 || acquires < 1 {
				t.Errorf("%d raft entries, %d acquires: want some of each", entries, acquires)
			}
			if strings.Contains(s, "note:") {
				t.Errorf("the run has notes")
			}
		})
	}
}

// TestBenchWindowAgainstNode runs `leasehold bench --algorithm
// sliding-window` against an in-process node: asked 4 times its limit by
// default, the window keeps its bound on every call and reports what share
// of its limit each window admitted.
func TestBenchWindowAgainstNode(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a node")
	}
	ep := startNode(t)
	var out bytes.Buffer
	err := runBench(context.Background(), []string{"--endpoints", ep, "--insecure", "--algorithm", "sliding-window",
		"--clients", "3", "--duration", "1500ms", "--rate", "100", "--per", "500ms"}, &out)
	s := out.String()
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, s)
	}
	for _, want := range []string{"leasehold window: 3 clients, 1 key, 1.5s, sliding window 100 per 500ms, 10 slots, demand 4x",
		"per window       admitted in a window of 500ms"} {
		if !strings.Contains(s, want) {
			t.Errorf("no %q in:\n%s", want, s)
		}
	}
	if over := atoi(t, overRE, s, 1); over != 0 {
		t.Errorf("over-admitted %d:\n%s", over, s)
	}
	if strings.Contains(s, "note:") {
		t.Errorf("the run has notes:\n%s", s)
	}
}

func TestBenchFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--skew", "2s"}, "--skew applies to --redis only"},
		{[]string{"--wait-replicas", "1"}, "--wait-replicas applies to --redis only"},
		{[]string{"--redis", "127.0.0.1:1", "--wait-replicas", "-1"}, "--wait-replicas -1"},
		{[]string{"--mode", "fast"}, `mode "fast"`},
		{[]string{"--algorithm", "leaky"}, `--algorithm "leaky"`},
		{[]string{"--algorithm", "sliding-window", "--slots", "65"}, "slots 65"},
		{[]string{"compare", "--algorithm", "sliding-window"}, "--window-*"},
		{[]string{"--clients", "0"}, "clients 0"},
		{[]string{"--endpoints", ","}, "--endpoints"},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"compare", "--nodes", "12"}, "--nodes 12"},
		{[]string{"--duration", "1s"}, "no certificate"},
		// Nobody answers (here: nothing listens): an error at once, not
		// a run retrying its first call for ever.
		{[]string{"--endpoints", "127.0.0.1:1", "--insecure", "--duration", "1s"}, "no endpoint answered"},
	} {
		for _, k := range []string{envCA, envCert, envKey} {
			t.Setenv(k, "")
		}
		err := runBench(context.Background(), tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("bench %q = %v, want an error about %q", tc.args, err, tc.want)
		}
	}
}
