//go:build unix

package jepsen

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
)

// Event is one line of a run's history (history.jsonl): something a process
// started (invoke) or finished (ok, fail, info), stamped with the host's
// CLOCK_MONOTONIC, the one reference clock every process of a run shares.
//
// Operations and their fields:
//
//	allow    a client's Allow/AllowN: invoke{Key, N}; ok = admitted (Lease is
//	         the lease it was spent from, 0 for a central decision or a
//	         fallback admission with Value "fallback"); fail = denied.
//	         N 0 means 1 (Allow). An AllowN that spends from several leases
//	         is recorded as one allow per lease, each with its own ID.
//	grant    the SDK's Acquire of a lease: invoke{Key, N (count), ClientID,
//	         Seq}; ok{Lease, N (granted), TTL, LogTime}; fail = denied or
//	         error (Value), info = outcome unknown. The invoke is stamped
//	         no earlier than the send time the SDK measures the lease from
//	         (client.Trace's AcquireStart), since the lease-expiry checker
//	         measures a lease's life from it.
//	release  the SDK's Release: invoke{Lease, N (unused), Key if known};
//	         ok/fail/info.
//	reserve  a Budget's Reserve, recorded once per rule: invoke{Key (the
//	         rule's key), N (the rule's share of the estimate), Res (the
//	         reservation, unique within the process)}; ok = reserved from
//	         every rule; fail = refused by some rule.
//	settle   a Reservation's Settle, once per rule: invoke{Key, N (the
//	         rule's share of the actual cost), Res}; ok/fail/info.
//	cancel   a Reservation's Cancel, once per rule: invoke{Key, N (0), Res};
//	         ok/fail/info. A reservation neither settled nor cancelled stays
//	         charged as reserved.
//	kill, restart, pause, resume, partition, heal, clock, join, leave
//	         nemesis operations (Process "nemesis"): invoke then ok or info,
//	         Value naming the targets, e.g. "n1" or "n1,n2|n3"; a target
//	         that led the cluster when the fault began is marked
//	         "leader:n2".
//
// Type "info" means the outcome is unknown: the operation may or may not
// have taken effect at any time after its invoke.
//
// The schema only grows: fields may be added, never renamed or given a new
// meaning, so that old histories stay readable.
type Event struct {
	Time     int64  `json:"t"`    // CLOCK_MONOTONIC nanoseconds
	Process  string `json:"p"`    // "n1".., "c1".., "nemesis", "harness"
	Type     string `json:"type"` // invoke, ok, fail, info
	Op       string `json:"op"`
	ID       uint64 `json:"id"` // pairs an invoke with its completion within a process
	Key      string `json:"key,omitempty"`
	N        int64  `json:"n,omitempty"`
	Lease    uint64 `json:"lease,omitempty"`
	TTL      int64  `json:"ttl_ns,omitempty"`
	LogTime  int64  `json:"log_time_ns,omitempty"`
	ClientID string `json:"client,omitempty"`
	Seq      uint64 `json:"seq,omitempty"`
	Value    string `json:"value,omitempty"`
	Res      uint64 `json:"res,omitempty"` // a Budget's reservation (reserve, settle, cancel)
	// Pieces and PieceNs describe an ok grant of a sliding window leased
	// in pieces: N tokens in Pieces pieces, each counted by the cluster in
	// its bucket of log time of width PieceNs (the last bucket ends at
	// LogTime + TTL). 0 for any other grant.
	Pieces  int32 `json:"pieces,omitempty"`
	PieceNs int64 `json:"piece_ns,omitempty"`
	// QueuedNs and AnsweredNs are what the answering node reported of an
	// ok grant's round trip: how long it held the request before stamping
	// LogTime and after (client.AcquireDoneInfo). For reports; no checker
	// trusts them.
	QueuedNs   int64 `json:"queued_ns,omitempty"`
	AnsweredNs int64 `json:"answered_ns,omitempty"`
}

// Event types.
const (
	Invoke = "invoke"
	OK     = "ok"
	Fail   = "fail"
	Info   = "info"
)

// Operation names (Event.Op).
const (
	OpAllow     = "allow"
	OpGrant     = "grant"
	OpRelease   = "release"
	OpReserve   = "reserve"
	OpSettle    = "settle"
	OpCancel    = "cancel"
	OpKill      = "kill"
	OpRestart   = "restart"
	OpPause     = "pause"
	OpResume    = "resume"
	OpPartition = "partition"
	OpHeal      = "heal"
	OpClock     = "clock"
	OpJoin      = "join"  // a fresh node starts and joins the cluster
	OpLeave     = "leave" // a node is out of the configuration for good
)

// Well-known values.
const (
	// ProcessNemesis is the Process of every nemesis operation.
	ProcessNemesis = "nemesis"
	// ValueFallback marks an ok allow that the SDK's failure policy
	// admitted while the cluster was unreachable.
	ValueFallback = "fallback"
	// ValueCentral marks the invoke of a grant sent as a central decision
	// (the SDK's Acquire with ttl 0).
	ValueCentral = "central"
	// LeaderPrefix marks a nemesis target that led the cluster when the
	// fault began: "leader:n2".
	LeaderPrefix = "leader:"
)

// ReadHistory reads a history written as JSON lines, one Event per line.
// Blank lines are skipped and unknown fields ignored (the schema only
// grows). An error names the line: bad JSON, an unknown Type, or a missing
// Process or Op. Events are returned in the order read; the checkers do
// not need them sorted.
func ReadHistory(r io.Reader) ([]Event, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	var events []Event
	for line := 1; ; line++ {
		b, err := br.ReadBytes('\n')
		if len(bytes.TrimSpace(b)) > 0 {
			var e Event
			if jerr := json.Unmarshal(b, &e); jerr != nil {
				return events, fmt.Errorf("history line %d: %w", line, jerr)
			}
			if verr := e.validate(); verr != nil {
				return events, fmt.Errorf("history line %d: %w", line, verr)
			}
			events = append(events, e)
		}
		if errors.Is(err, io.EOF) {
			return events, nil
		}
		if err != nil {
			return events, fmt.Errorf("history line %d: %w", line, err)
		}
	}
}

// validate reports what makes e unusable by the checkers.
func (e *Event) validate() error {
	switch e.Type {
	case Invoke, OK, Fail, Info:
	default:
		return fmt.Errorf("unknown event type %q (want invoke, ok, fail or info)", e.Type)
	}
	if e.Process == "" {
		return errors.New("event has no process")
	}
	if e.Op == "" {
		return errors.New("event has no op")
	}
	return nil
}

// ErrWriterClosed is returned by a HistoryWriter's methods after Close.
var ErrWriterClosed = errors.New("history writer closed")

// HistoryWriter writes Events as JSON lines, one per Write, buffered. It is
// safe for concurrent use; lines are never interleaved. The first error is
// sticky: later Writes return it and write nothing.
type HistoryWriter struct {
	mu struct {
		sync.Mutex
		w      io.Writer
		bw     *bufio.Writer
		err    error
		closed bool
	}
}

// NewHistoryWriter returns a HistoryWriter writing to w. Call Close (or
// Flush) to push buffered lines out.
func NewHistoryWriter(w io.Writer) *HistoryWriter {
	h := &HistoryWriter{}
	h.mu.w = w
	h.mu.bw = bufio.NewWriterSize(w, 1<<16)
	return h
}

// Write appends e as one JSON line. It does not stamp e: Time is the
// caller's reading of the reference clock.
func (h *HistoryWriter) Write(e Event) error {
	b, err := json.Marshal(&e)
	if err != nil {
		return fmt.Errorf("encode event: %w", err)
	}
	b = append(b, '\n')
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.mu.closed {
		return ErrWriterClosed
	}
	if h.mu.err == nil {
		_, h.mu.err = h.mu.bw.Write(b)
	}
	return h.mu.err
}

// Flush writes buffered lines to the underlying writer.
func (h *HistoryWriter) Flush() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.mu.closed {
		return ErrWriterClosed
	}
	if h.mu.err == nil {
		h.mu.err = h.mu.bw.Flush()
	}
	return h.mu.err
}

// Close flushes, then closes the underlying writer if it is an io.Closer.
// It returns the first error the writer saw; later calls return
// ErrWriterClosed.
func (h *HistoryWriter) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.mu.closed {
		return ErrWriterClosed
	}
	h.mu.closed = true
	if h.mu.err == nil {
		h.mu.err = h.mu.bw.Flush()
	}
	if c, ok := h.mu.w.(io.Closer); ok {
		if err := c.Close(); err != nil && h.mu.err == nil {
			h.mu.err = err
		}
	}
	return h.mu.err
}

// Op is an operation: an invoke paired with its completion.
type Op struct {
	Process, Op string
	Invoke      Event
	// Complete is the ok, fail or info event; the zero Event if !Done.
	Complete Event
	// Done is false when the operation never completed (the process died
	// or the run ended): its outcome is unknown, as for info.
	Done bool
}

// OK reports whether the operation completed with type ok.
func (o *Op) OK() bool { return o.Done && o.Complete.Type == OK }

// Unknown reports whether the operation's outcome is unknown: it completed
// with info or never completed.
func (o *Op) Unknown() bool { return !o.Done || o.Complete.Type == Info }

// End returns the completion time, or maxTime if the operation never
// completed: an unknown outcome may take effect at any time after the
// invoke.
func (o *Op) End() int64 {
	if !o.Done {
		return maxTime
	}
	return o.Complete.Time
}

// maxTime stands for "never" on the reference clock.
const maxTime = int64(1<<63 - 1)

// Pair pairs each invoke with its completion, the next ok/fail/info event of
// the same (Process, ID) in time order (at one instant invokes first, then
// the order given), and
// returns the operations ordered by invoke time. Completions with no open
// invoke are dropped (CheckHistory reports them), as are events with an
// unknown Type.
func Pair(events []Event) []Op {
	ops, _ := pairOps(events)
	return ops
}

// completionRank orders events at one instant: invokes (0) first.
func completionRank(e Event) int {
	if e.Type == Invoke {
		return 0
	}
	return 1
}

// pairOps is Pair that also returns the completions it could not pair.
func pairOps(events []Event) ([]Op, []Event) {
	sorted := slices.Clone(events)
	slices.SortStableFunc(sorted, func(a, b Event) int {
		if c := cmp.Compare(a.Time, b.Time); c != 0 {
			return c
		}
		// At one instant an invoke comes first: an operation may complete
		// in the same nanosecond it began.
		return cmp.Compare(completionRank(a), completionRank(b))
	})
	type pk struct {
		process string
		id      uint64
	}
	open := make(map[pk]int)
	var ops []Op
	var orphans []Event
	for _, e := range sorted {
		k := pk{e.Process, e.ID}
		switch e.Type {
		case Invoke:
			// An ID reused before its first operation completed leaves
			// that one incomplete.
			open[k] = len(ops)
			ops = append(ops, Op{Process: e.Process, Op: e.Op, Invoke: e})
		case OK, Fail, Info:
			i, ok := open[k]
			if !ok {
				orphans = append(orphans, e)
				continue
			}
			delete(open, k)
			ops[i].Complete = e
			ops[i].Done = true
		}
	}
	return ops, orphans
}
