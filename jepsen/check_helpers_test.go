//go:build unix

package jepsen

import (
	"strings"
	"testing"
	"time"
)

// msec returns x milliseconds in nanoseconds, the history's unit.
func msec(x float64) int64 { return int64(x * 1e6) }

// testHistory builds a history for a test, one operation at a time. Times are
// nanoseconds; helpers take milliseconds through msec.
type testHistory struct {
	events []Event
	nextID uint64
}

// op adds an operation: invoke at t0 with the fields of in, completion of
// type typ at t1 with the fields of out; typ "" never completes.
func (h *testHistory) op(process, op string, t0, t1 int64, typ string, in, out Event) *testHistory {
	h.nextID++
	in.Time, in.Process, in.Type, in.Op, in.ID = t0, process, Invoke, op, h.nextID
	h.events = append(h.events, in)
	if typ != "" {
		out.Time, out.Process, out.Type, out.Op, out.ID = t1, process, typ, op, h.nextID
		h.events = append(h.events, out)
	}
	return h
}

// grant adds an ok grant of n tokens as lease to client (process p).
func (h *testHistory) grant(p, key string, seq uint64, t0, t1 int64, lease uint64, n int64, ttl time.Duration) *testHistory {
	return h.op(p, OpGrant, t0, t1, OK,
		Event{Key: key, N: n, ClientID: p, Seq: seq},
		Event{Lease: lease, N: n, TTL: int64(ttl), LogTime: t1})
}

// pieced adds an ok grant of n tokens as lease in pieces of piece width
// (log time), answered at log time t1 with a life ending at log time end.
func (h *testHistory) pieced(p, key string, seq uint64, t0, t1 int64, lease uint64, n int64, end int64, pieces int32, piece time.Duration) *testHistory {
	return h.op(p, OpGrant, t0, t1, OK,
		Event{Key: key, N: n, ClientID: p, Seq: seq},
		Event{Lease: lease, N: n, TTL: end - t1, LogTime: t1, Pieces: pieces, PieceNs: int64(piece)})
}

// ticks adds a denied grant of key by process p every step from t0 to t1,
// answered 1ms later at log time equal to its invoke: what the cluster's
// answers tell of its log time.
func (h *testHistory) ticks(p, key string, t0, t1, step int64) *testHistory {
	for t := t0; t <= t1; t += step {
		h.op(p, OpGrant, t, t+msec(1), Fail, Event{Key: key, N: 1, ClientID: p, Seq: uint64(t)}, Event{Value: "denied", LogTime: t})
	}
	return h
}

// central adds an ok central grant (invoke marked ValueCentral) of n
// tokens to process p, answered at t1 with a span of ttl.
func (h *testHistory) central(p, key string, seq uint64, t0, t1 int64, n int64, ttl time.Duration) *testHistory {
	return h.op(p, OpGrant, t0, t1, OK,
		Event{Key: key, N: n, ClientID: p, Seq: seq, Value: ValueCentral},
		Event{N: n, TTL: int64(ttl), LogTime: t1})
}

// lateCentral is c1's 10 calls on "sw" at 0, decided by one central grant
// answered at answer, and c2's 10 decided by a grant sent and answered at
// 1.05s, when the window has slid past c1's grant.
func lateCentral(answer int64) *testHistory {
	return new(testHistory).
		allows(10, "c1", "sw", msec(0), answer+msec(0.1), 0).
		central("c1", "sw", 1, msec(0.05), answer, 10, 25*time.Millisecond).
		central("c2", "sw", 1, msec(1050), msec(1050), 10, 25*time.Millisecond).
		allows(10, "c2", "sw", msec(1050), msec(1050.1), 0)
}

// lateBucket is a token bucket's central grant answered late, on key (10
// per second, burst 10): c1's 10 calls wait for a grant applied at 0 and
// answered at answer; c3's 10 are decided centrally at 2s, when the bucket
// is full again. Its grants answer with the key's MaxLease (1s).
func lateBucket(key string, answer int64) *testHistory {
	return new(testHistory).
		allows(10, "c1", key, msec(0), answer+msec(0.1), 0).
		central("c1", key, 1, msec(0.05), answer, 10, time.Second).
		central("c3", key, 1, msec(2000), msec(2000), 10, time.Second).
		allows(10, "c3", key, msec(2000), msec(2000.1), 0)
}

// allow adds an ok allow of n tokens spent from lease.
func (h *testHistory) allow(p, key string, t0, t1 int64, lease uint64, n int64) *testHistory {
	return h.op(p, OpAllow, t0, t1, OK, Event{Key: key, N: n}, Event{Lease: lease})
}

// allows adds count ok allows of one token each over [t0, t1].
func (h *testHistory) allows(count int, p, key string, t0, t1 int64, lease uint64) *testHistory {
	for range count {
		h.allow(p, key, t0, t1, lease, 1)
	}
	return h
}

// release adds an ok release of n unused tokens of lease.
func (h *testHistory) release(p string, lease uint64, n int64, t0, t1 int64) *testHistory {
	return h.op(p, OpRelease, t0, t1, OK, Event{Lease: lease, N: n}, Event{})
}

// nemesis adds an ok nemesis operation.
func (h *testHistory) nemesis(op, value string, t0, t1 int64) *testHistory {
	return h.op(ProcessNemesis, op, t0, t1, OK, Event{Value: value}, Event{Value: value})
}

// Test keys. "tb": 10 tokens per second, burst 10, leases up to 1s, so
// B + r·Λ = 20. "strict": the same, strict. "sw": 10 per 1s window.
var testKeys = []KeySpec{
	{Key: "tb", Algorithm: AlgorithmTokenBucket, Limit: 10, Period: time.Second, Burst: 10, MaxLease: time.Second},
	{Key: "strict", Algorithm: AlgorithmTokenBucket, Limit: 10, Period: time.Second, Burst: 10, Strict: true, MaxLease: time.Second},
	{Key: "sw", Algorithm: AlgorithmSlidingWindow, Limit: 10, Period: time.Second, MaxLease: time.Second},
}

// checkFunc is a CheckX function.
type checkFunc func([]Event, []KeySpec, Options) Result

// requireValid fails t unless r is valid.
func requireValid(t *testing.T, r Result) {
	t.Helper()
	if !r.Valid {
		t.Errorf("%s: invalid, want valid: %s\n%s", r.Name, r.Summary, strings.Join(r.Violations, "\n"))
	}
}

// requireInvalid fails t unless r is invalid with a violation containing
// want.
func requireInvalid(t *testing.T, r Result, want string) {
	t.Helper()
	if r.Valid {
		t.Errorf("%s: valid, want a violation containing %q: %s", r.Name, want, r.Summary)
		return
	}
	for _, v := range r.Violations {
		if strings.Contains(v, want) {
			return
		}
	}
	t.Errorf("%s: no violation contains %q:\n%s", r.Name, want, strings.Join(r.Violations, "\n"))
}
