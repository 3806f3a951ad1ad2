package cluster

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// errorRecorder is a slog.Handler that passes records to next and keeps
// the message and attributes of each at ERROR or above.
type errorRecorder struct {
	next  slog.Handler
	attrs []slog.Attr
	mu    *sync.Mutex
	errs  *[]string
}

func (h *errorRecorder) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelError || h.next.Enabled(ctx, l)
}

func (h *errorRecorder) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		line := r.Message
		for _, a := range h.attrs {
			line += " " + a.String()
		}
		r.Attrs(func(a slog.Attr) bool { line += " " + a.String(); return true })
		h.mu.Lock()
		*h.errs = append(*h.errs, line)
		h.mu.Unlock()
	}
	if h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

func (h *errorRecorder) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.next = h.next.WithAttrs(attrs)
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), attrs...)
	return &c
}

func (h *errorRecorder) WithGroup(name string) slog.Handler {
	c := *h
	c.next = h.next.WithGroup(name)
	return &c
}

// TestCleanShutdownLogsNoError: closing every node of a healthy 3-node
// cluster, and a node's graceful leave, logged ERROR lines from raft's
// transport and memberlist about I/O on connections and listeners the
// closing node had closed itself ("use of closed network connection"):
// expected on every clean shutdown, so they are logged at Debug.
func TestCleanShutdownLogsNoError(t *testing.T) {
	var mu sync.Mutex
	var errs []string
	record := func(c *Config) {
		c.Logger = slog.New(&errorRecorder{next: c.Logger.Handler(), mu: &mu, errs: &errs})
	}
	g, nodes := bootstrapN(t, 4, record)
	g.waitVoters(opWait, "n1", "n2", "n3", "n4")
	g.waitHealthy()
	// What start-up logged is not this test's subject: on a loaded
	// machine memberlist may log a ping that timed out while the nodes
	// were starting (seen at load 7 on the shared 2-core VM, 2026-12-07,
	// "Failed fallback TCP ping: timeout 1s" amid election timeouts).
	mu.Lock()
	errs = nil
	mu.Unlock()
	var leaver *Node
	for _, n := range nodes {
		if !n.IsLeader() {
			leaver = n
			break
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), opWait)
	defer cancel()
	if err := leaver.Leave(ctx); err != nil {
		t.Fatalf("leave: %v", err)
	}
	closeNode(g, leaver)
	g.waitVoters(opWait, voterIDs(nodes, leaver)...)
	var wg sync.WaitGroup
	for _, n := range nodes {
		if n != leaver {
			wg.Go(func() { closeNode(g, n) })
		}
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	for _, e := range errs {
		if peerRPCFailed(e) {
			continue
		}
		t.Errorf("a clean shutdown logged an ERROR: %s", e)
	}
}

// peerRPCFailed reports whether line is raft's ERROR about an RPC to a
// peer that failed: a survivor's send to a node that shut down, which
// stays ERROR since nothing tells it from a crash (DESIGN.md). The nodes
// close at once, so one still running may send to one already closed (a
// leader elected under load appended to a closed follower: "EOF"); not
// this test's subject, which is a node's errors about its own close.
func peerRPCFailed(line string) bool {
	for _, p := range []string{"failed to appendEntries to", "failed to heartbeat to", "failed to make requestVote RPC"} {
		if strings.HasPrefix(line, p) {
			return true
		}
	}
	return false
}

// voterIDs returns the ids of nodes, less but.
func voterIDs(nodes []*Node, but *Node) []string {
	var out []string
	for _, n := range nodes {
		if n != but {
			out = append(out, n.ID())
		}
	}
	return out
}
