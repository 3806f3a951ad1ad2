package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
)

// records decodes the JSON lines a slog.JSONHandler wrote.
func records(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("bad log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	buf.Reset()
	return out
}

func TestHCLogAdapter(t *testing.T) {
	var buf bytes.Buffer
	base := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	l := newHCLog(base, "raft")

	// Levels map one to one; Trace is below the handler's Debug.
	l.Trace("hidden")
	l.Debug("d")
	l.Info("i")
	l.Warn("w")
	l.Error("e")
	l.Log(hclog.NoLevel, "n")
	l.Log(hclog.Off, "off")
	var levels []string
	for _, r := range records(t, &buf) {
		levels = append(levels, r["level"].(string)+":"+r["msg"].(string))
	}
	if got, want := strings.Join(levels, " "), "DEBUG:d INFO:i WARN:w ERROR:e INFO:n"; got != want {
		t.Errorf("logged %q; want %q", got, want)
	}
	if l.IsTrace() || !l.IsDebug() || !l.IsInfo() || !l.IsWarn() || !l.IsError() {
		t.Errorf("Is* = %v %v %v %v %v; want false then true", l.IsTrace(), l.IsDebug(), l.IsInfo(), l.IsWarn(), l.IsError())
	}
	if got := l.GetLevel(); got != hclog.Debug {
		t.Errorf("GetLevel() = %v; want debug", got)
	}

	// Named and With compose; key/value pairs pass through; hclog's value
	// types are rendered.
	named := l.Named("net").With("peer", "n2")
	if named.Name() != "raft.net" {
		t.Errorf("Name() = %q; want raft.net", named.Name())
	}
	if args := named.ImpliedArgs(); len(args) != 2 || args[0] != "peer" {
		t.Errorf("ImpliedArgs() = %v", args)
	}
	named.Info("hello", "index", 7, "err", errors.New("boom"), "f", hclog.Fmt("%d-%s", 3, "x"))
	r := records(t, &buf)[0]
	for k, want := range map[string]any{"logger": "raft.net", "peer": "n2", "index": float64(7), "err": "boom", "f": "3-x"} {
		if r[k] != want {
			t.Errorf("record[%q] = %v; want %v (record %v)", k, r[k], want, r)
		}
	}
	if reset := named.ResetNamed("snap"); reset.Name() != "snap" {
		t.Errorf("ResetNamed name = %q", reset.Name())
	}
	// With does not leak into the parent.
	l.Info("plain")
	if r := records(t, &buf)[0]; r["peer"] != nil || r["logger"] != "raft" {
		t.Errorf("parent record = %v; want no peer, logger raft", r)
	}

	// SetLevel raises the floor for the whole family.
	named.SetLevel(hclog.Warn)
	l.Info("dropped")
	l.Warn("kept")
	if rs := records(t, &buf); len(rs) != 1 || rs[0]["msg"] != "kept" {
		t.Errorf("after SetLevel(warn): %v", rs)
	}
	if got := l.GetLevel(); got != hclog.Warn {
		t.Errorf("GetLevel() after SetLevel(warn) = %v", got)
	}
	l.SetLevel(hclog.NoLevel)

	// The standard logger writes at Info, or the forced level.
	l.StandardLogger(nil).Print("std line")
	l.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Error}).Print("forced")
	rs := records(t, &buf)
	if len(rs) != 2 || rs[0]["level"] != "INFO" || rs[0]["msg"] != "std line" || rs[1]["level"] != "ERROR" || rs[0]["logger"] != "raft" {
		t.Errorf("standard logger records = %v", rs)
	}
}

// TestStandardLoggerInfersLevels: memberlist writes its lines through a
// standard logger with a "[LEVEL]" prefix and asks for InferLevels; they
// were all logged at Info, so its per-connection "[DEBUG]" lines filled an
// idle node's log (one more for every connection anyone opened to the
// gossip port) and its "[ERR]" lines did not stand out.
func TestStandardLoggerInfersLevels(t *testing.T) {
	var buf bytes.Buffer
	base := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	std := newHCLog(base, "memberlist").StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})
	std.Printf("[DEBUG] memberlist: Stream connection from=127.0.0.1:5")
	std.Printf("[WARN] memberlist: Was able to connect to n2 over TCP but UDP probes failed")
	std.Printf("[ERR] memberlist: Error accepting TCP connection: too many open files")
	std.Printf("no prefix")
	got := records(t, &buf)
	want := []struct{ level, msg string }{
		{"WARN", "memberlist: Was able to connect to n2 over TCP but UDP probes failed"},
		{"ERROR", "memberlist: Error accepting TCP connection: too many open files"},
		{"INFO", "no prefix"},
	}
	if len(got) != len(want) {
		t.Fatalf("logged %d lines, want %d (the [DEBUG] one hidden at Info): %v", len(got), len(want), got)
	}
	for i, w := range want {
		if got[i]["level"] != w.level || got[i]["msg"] != w.msg || got[i]["logger"] != "memberlist" {
			t.Errorf("line %d: %v; want level %s, msg %q, logger memberlist", i, got[i], w.level, w.msg)
		}
	}
}

// TestConflictingAddressIsAWarning: memberlist logs "[ERR] ... Conflicting
// address" for every alive message of a moved node it refuses while the
// old address is not yet dead, which NotifyConflict handles; logged at
// ERROR, a routine move paged. Only that line is lowered.
func TestConflictingAddressIsAWarning(t *testing.T) {
	var buf bytes.Buffer
	base := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	std := newHCLog(base, "memberlist").StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})
	// As memberlist v0.6.0's aliveNode formats it.
	conflict := fmt.Sprintf("memberlist: Conflicting address for %s. Mine: %v:%d Theirs: %v:%d Old state: %v",
		"n2", net.IPv4(127, 0, 0, 1), 7946, net.IPv4(127, 0, 0, 1), 7947, memberlist.StateSuspect)
	std.Printf("[ERR] %s", conflict)
	std.Printf("[ERR] memberlist: Failed to decode alive message: EOF Conflicting address for n2")
	std.Printf("[INFO] memberlist: Conflicting address for n2, as an INFO line")
	want := []struct{ level, msg string }{
		{"WARN", conflict},
		{"ERROR", "memberlist: Failed to decode alive message: EOF Conflicting address for n2"},
		{"INFO", "memberlist: Conflicting address for n2, as an INFO line"},
	}
	got := records(t, &buf)
	if len(got) != len(want) {
		t.Fatalf("logged %d lines, want %d: %v", len(got), len(want), got)
	}
	for i, w := range want {
		if got[i]["level"] != w.level || got[i]["msg"] != w.msg {
			t.Errorf("line %d: %v; want level %s, msg %q", i, got[i], w.level, w.msg)
		}
	}
}

// TestStandardLoggerLimitsAFloodOfErrors: memberlist logs an "[ERR]" line
// for every gossip connection that sends bytes it cannot read (1000 junk
// connections: 1000 lines); its warnings and errors are rate-limited.
func TestStandardLoggerLimitsAFloodOfErrors(t *testing.T) {
	var buf bytes.Buffer
	base := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	std := newHCLog(base, "memberlist").StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})
	for range 1000 {
		std.Printf("[ERR] memberlist: failed to receive: Unknown message type: 42 from=127.0.0.1:5")
	}
	if got := records(t, &buf); len(got) >= 100 {
		t.Fatalf("1000 [ERR] lines in a burst logged %d lines; want them rate-limited", len(got))
	}
}

// TestOwnCloseErrorsAreDebug: an error about a connection this process
// closed is logged at Debug, from raft (an error argument) and memberlist
// (its text); any other error stays at ERROR.
func TestOwnCloseErrorsAreDebug(t *testing.T) {
	var buf bytes.Buffer
	base := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	l := newHCLog(base, "raft.net")
	closed := &net.OpError{Op: "accept", Net: "tcp", Err: net.ErrClosed}
	l.Error("failed to accept connection", "error", closed)
	l.Error("failed to decode incoming command", "error", errors.New("read tcp 1->2: "+net.ErrClosed.Error()))
	l.Error("failed to heartbeat to", "error", errors.New("dial tcp 127.0.0.1:1: connect: connection refused"))
	l.Error("failed to decode incoming command", "error", raft.ErrTransportShutdown)
	ml := newHCLog(base, "memberlist").StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})
	ml.Printf("[ERR] memberlist: Failed to send gossip to 127.0.0.1:1: write udp: %v", net.ErrClosed)
	ml.Printf("[ERR] memberlist: Failed to send gossip to 127.0.0.1:1: connection refused")
	want := []string{"DEBUG", "DEBUG", "ERROR", "DEBUG", "DEBUG", "ERROR"}
	got := records(t, &buf)
	if len(got) != len(want) {
		t.Fatalf("%d records, want %d: %v", len(got), len(want), got)
	}
	for i, r := range got {
		if r["level"] != want[i] {
			t.Errorf("record %d (%v) at %v, want %s", i, r["msg"], r["level"], want[i])
		}
	}
}
