package main

import (
	"net"
	"strings"
	"testing"
)

// TestStatusFailsWhenANodeDoesNotAnswer: status prints every node, the
// unreachable ones too, and exits non-zero if any did not answer.
// Regression: it failed only when none answered, so a monitoring check
// running it saw a cluster with a node down as healthy.
func TestStatusFailsWhenANodeDoesNotAnswer(t *testing.T) {
	up := startNode(t)
	// A listener that never accepts: the kernel completes the handshake, no
	// server ever answers, and the port stays this test's.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	down := silent.Addr().String()
	for _, format := range [][]string{nil, {"--json"}} {
		var out strings.Builder
		args := append([]string{"--endpoints", up + "," + down, "--insecure", "--timeout", "1s"}, format...)
		err := runStatus(t.Context(), args, &out)
		if err == nil || !strings.Contains(err.Error(), "1 of 2 endpoints did not answer: "+down) {
			t.Errorf("status %q: %v; want an error naming %s", format, err, down)
		}
		lines, want := strings.Split(strings.TrimSpace(out.String()), "\n"), 2
		if format == nil {
			want++ // the header
		}
		if len(lines) != want {
			t.Errorf("status %q printed %d lines; want one per endpoint (and a header without --json):\n%s", format, len(lines), out.String())
		}
		for _, ep := range []string{up, down} {
			if !strings.Contains(out.String(), ep) {
				t.Errorf("status %q left out %s:\n%s", format, ep, out.String())
			}
		}
	}
	if err := runStatus(t.Context(), []string{"--endpoints", up, "--insecure"}, &strings.Builder{}); err != nil {
		t.Errorf("status of the node that answers: %v", err)
	}
}
