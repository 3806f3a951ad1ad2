package main

import (
	"encoding/json"
	"fmt"
	"math"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/leasehold/leasehold/cluster"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
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

// TestStatusShowsTheCaps: the table shows keys and sessions out of the
// node's caps, and --json carries the caps, so that an operator sees how
// near the leader is to refusing new keys and clients.
func TestStatusShowsTheCaps(t *testing.T) {
	up := startNode(t)
	var out strings.Builder
	if err := runStatus(t.Context(), []string{"--endpoints", up, "--insecure"}, &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("status printed %d lines, want a header and a node:\n%s", len(lines), out.String())
	}
	header, row := strings.Fields(lines[0]), strings.Fields(lines[1])
	keys, sessions := slices.Index(header, "KEYS"), slices.Index(header, "SESSIONS")
	// LOG TIME and RAFT ADDR are two words in the header, one in the row.
	if keys < 0 || sessions < 0 || len(row) != len(header)-2 {
		t.Fatalf("status table has no KEYS and SESSIONS columns:\n%s", out.String())
	}
	wantKeys, wantSessions := fmt.Sprintf("0/%d", cluster.DefaultMaxKeys), fmt.Sprintf("0/%d", cluster.DefaultMaxSessions)
	if row[keys-1] != wantKeys || row[sessions-1] != wantSessions {
		t.Errorf("KEYS %q, SESSIONS %q; want %q and %q:\n%s", row[keys-1], row[sessions-1], wantKeys, wantSessions, out.String())
	}

	out.Reset()
	if err := runStatus(t.Context(), []string{"--endpoints", up, "--insecure", "--json"}, &out); err != nil {
		t.Fatal(err)
	}
	var obj struct {
		MaxKeys     int64 `json:"max_keys"`
		MaxSessions int64 `json:"max_sessions"`
	}
	if err := json.Unmarshal([]byte(out.String()), &obj); err != nil {
		t.Fatal(err)
	}
	if obj.MaxKeys != cluster.DefaultMaxKeys || obj.MaxSessions != cluster.DefaultMaxSessions {
		t.Errorf("status --json max_keys %v, max_sessions %v; want %d and %d", obj.MaxKeys, obj.MaxSessions,
			cluster.DefaultMaxKeys, cluster.DefaultMaxSessions)
	}
}

// TestStatusJSONQuotedItsIntegers: status --json printed every 64-bit
// integer as a string ("keys":"5"), protojson's way, so a script's jq
// `.keys > 1000` was true whatever the count and `.keys / .max_keys` an
// error. They are numbers now, under the same names; strings stay strings.
func TestStatusJSONQuotedItsIntegers(t *testing.T) {
	up := startNode(t)
	var out strings.Builder
	if err := runStatus(t.Context(), []string{"--endpoints", up, "--insecure", "--json"}, &out); err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	if err := json.Unmarshal([]byte(out.String()), &obj); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"term", "applied_index", "commit_index", "log_time_ns", "keys", "leases", "sessions",
		"max_keys", "max_sessions"} {
		if _, ok := obj[name].(float64); !ok {
			t.Errorf("status --json %s: %#v; want a number", name, obj[name])
		}
	}
	for _, name := range []string{"node_id", "leader_id", "raft_addr", "node_state", "endpoint"} {
		if _, ok := obj[name].(string); !ok {
			t.Errorf("status --json %s: %#v; want a string", name, obj[name])
		}
	}
	if servers, _ := obj["servers"].([]any); len(servers) != 1 {
		t.Errorf("status --json servers: %#v; want the one server", obj["servers"])
	}
}

// answerJSON gives every 64-bit integer, in nested and repeated messages
// too, as a JSON number with protojson's digits, exact beyond 2^53, and
// leaves a string of digits a string.
func TestAnswerJSONNumbersAreExact(t *testing.T) {
	resp := &pb.MembersResponse{LeaderId: "7", FailureTolerance: 1, Members: []*pb.Member{
		{Id: "7", LastContactNs: -1, LastIndex: math.MaxUint64, StableSinceUnixNs: 1796601600123456789},
	}}
	obj, err := answerJSON(resp)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"leader_id":"7"`, `"id":"7"`, `"last_contact_ns":-1`, `"last_index":18446744073709551615`,
		`"stable_since_unix_ns":1796601600123456789`, `"failure_tolerance":1`, `"suffrage":"SUFFRAGE_`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("answerJSON printed %s; want %s in it", b, want)
		}
	}
}
