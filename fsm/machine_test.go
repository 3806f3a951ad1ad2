package fsm

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/leasehold/leasehold/limiter"
)

// rig applies commands to a Machine one log entry at a time, stamped with a log
// time the test moves by hand.
type rig struct {
	t   testing.TB
	m   *Machine
	now int64 // stamp of the next entry
}

// rigStart is the log time a rig starts at: far from zero, so that nothing
// depends on a bucket's zero state meaning "full since the beginning of time".
const rigStart = int64(1000 * time.Second)

func newRig(t testing.TB) *rig {
	return &rig{t: t, m: New(), now: rigStart}
}

func (r *rig) advance(d time.Duration) { r.now += int64(d) }

// apply applies c as one entry and returns its result.
func (r *rig) apply(c Command) Result {
	r.t.Helper()
	res := r.m.Apply(Encode(nil, r.now, c))
	if len(res) != 1 {
		r.t.Fatalf("apply %T: %d results, want 1", c, len(res))
	}
	return res[0]
}

// ok applies c and fails the test unless it is StatusOK.
func (r *rig) ok(c Command) Result {
	r.t.Helper()
	res := r.apply(c)
	if res.Status != StatusOK {
		r.t.Fatalf("apply %T %+v: %v (%s), want ok", c, c, res.Status, res.Message)
	}
	return res
}

func (r *rig) setLimit(key string, l Limit) {
	r.t.Helper()
	r.ok(&SetLimit{Key: key, Limit: l})
}

// remaining returns what an acquire on key could get now, without taking
// anything: it asks for more than any limit holds, which is denied with
// RetryAfter Never and reports the key's Remaining. ttl matters for sliding
// windows (the span a grant would cover) and concurrency (which needs one).
func (r *rig) remaining(key string, ttl time.Duration) int64 {
	r.t.Helper()
	res := r.apply(&Acquire{Items: []Item{{Key: key, Count: 1 << 60}}, TTL: ttl})
	if res.Status != StatusDenied || res.RetryAfter != limiter.Never || len(res.Items) != 1 {
		r.t.Fatalf("probe of %q: %+v, want a denial with RetryAfter Never", key, res)
	}
	return res.Items[0].Remaining
}

// snapshotOf returns m's snapshot bytes.
func snapshotOf(t testing.TB, m *Machine) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := m.Snapshot(&buf); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	return buf.Bytes()
}

// restoreFrom returns a fresh machine restored from snap.
func restoreFrom(t testing.TB, snap []byte) *Machine {
	t.Helper()
	m := New()
	if err := m.Restore(bytes.NewReader(snap)); err != nil {
		t.Fatalf("restore: %v", err)
	}
	return m
}

// keyView is what the machine holds for one key, read from its internals.
type keyView struct {
	Pinned  bool
	Limit   Limit // normalized
	State   int64 // a bucket's TAT or a concurrency limit's held units
	Window  *limiter.WindowState
	Lessees int32 // clients holding live leases on the key
}

// inspectKey reads a key's state from the machine's internals; ok is false if
// the machine holds no memory of the key: no map slot, no entry, no window.
func inspectKey(t testing.TB, m *Machine, key string) (v keyView, ok bool) {
	t.Helper()
	i := m.keys.findString(m.entries, key)
	inMap := i >= 0
	inEntries := false
	for i := range m.entries {
		if m.entries[i].key == key {
			inEntries = true
		}
	}
	ws := m.windows[key]
	if !inMap {
		if inEntries || ws != nil {
			t.Fatalf("key %q: not in the map but in entries (%v) or windows (%v)", key, inEntries, ws != nil)
		}
		return keyView{Lessees: m.lessees(key)}, false
	}
	e := m.entries[i]
	if e.key != key {
		t.Fatalf("key %q: slot points at entry of %q", key, e.key)
	}
	var wv *limiter.WindowState
	if ws != nil {
		wv = &ws.WindowState
	}
	return keyView{
		Pinned:  e.pinned(),
		Limit:   m.limits.get(e.limit()).def,
		State:   e.state,
		Window:  wv,
		Lessees: m.lessees(key),
	}, true
}

// leasedKeys returns how many keys, existing or deleted, live leases name.
func leasedKeys(m *Machine) int {
	n := len(m.orphans)
	for i := range m.entries {
		if m.entries[i].lessees() > 0 {
			n++
		}
	}
	return n
}

// limitSlotsInUse returns how many limit definitions the machine holds.
func limitSlotsInUse(m *Machine) int {
	n := 0
	for id := 1; id < len(m.limits.slots); id++ {
		if m.limits.slots[id].refs > 0 {
			n++
		}
	}
	return n
}

var (
	// bucket10: 10 tokens per 10s (1 token/s), burst 10.
	bucket10 = Limit{Algorithm: TokenBucket, Limit: 10, Period: 10 * time.Second}
	// window5: 5 tokens per 10s window, 10 slots of 1s.
	window5 = Limit{Algorithm: SlidingWindow, Limit: 5, Period: 10 * time.Second}
	// conc3: 3 units held at once.
	conc3 = Limit{Algorithm: Concurrency, Limit: 3}
)

func TestBadInput(t *testing.T) {
	long := strings.Repeat("k", MaxKeyLen+1)
	maxKey := strings.Repeat("k", MaxKeyLen)
	items := func(n int) []Item {
		its := make([]Item, n)
		for i := range its {
			its[i] = Item{Key: "item-" + string(rune('a'+i)), Count: 1, Limit: &bucket10}
		}
		return its
	}
	inline := func(l Limit) *Limit { return &l }
	tests := []struct {
		name    string
		cmd     Command
		status  Status
		message string // a substring of the Message
	}{
		{"unknown key without limit", &Acquire{Items: []Item{{Key: "nolimit", Count: 1}}},
			StatusNoLimit, "key nolimit has no limit; set one or send one with the acquire"},
		{"count 0", &Acquire{Items: []Item{{Key: "k", Count: 0}}},
			StatusInvalidCount, `key "k": count 0 must be positive`},
		{"count -1", &Acquire{Items: []Item{{Key: "k", Count: -1}}},
			StatusInvalidCount, `key "k": count -1 must be positive`},
		{"want below count", &Acquire{Items: []Item{{Key: "k", Count: 3, Want: 2}}},
			StatusInvalidCount, `key "k": want 2 is below count 3`},
		{"empty key", &Acquire{Items: []Item{{Key: "", Count: 1, Limit: &bucket10}}},
			StatusInvalidKey, "key is empty"},
		{"key of 513 bytes", &Acquire{Items: []Item{{Key: long, Count: 1, Limit: &bucket10}}},
			StatusInvalidKey, "key is 513 bytes; the most is 512"},
		{"key of 512 bytes", &Acquire{Items: []Item{{Key: maxKey, Count: 1, Limit: &bucket10}}},
			StatusOK, ""},
		{"inline rate 0", &Acquire{Items: []Item{{Key: "new", Count: 1,
			Limit: inline(Limit{Algorithm: TokenBucket, Limit: 0, Period: time.Second})}}},
			StatusInvalidLimit, `key "new": limit 0 must be positive`},
		{"inline negative period", &Acquire{Items: []Item{{Key: "new", Count: 1,
			Limit: inline(Limit{Algorithm: TokenBucket, Limit: 1, Period: -time.Second})}}},
			StatusInvalidLimit, "period -1s must be positive"},
		{"inline unknown algorithm", &Acquire{Items: []Item{{Key: "new", Count: 1,
			Limit: inline(Limit{Algorithm: 7, Limit: 1, Period: time.Second})}}},
			StatusInvalidLimit, "unknown algorithm 7"},
		{"inline limit invalid on a key that has one", &Acquire{Items: []Item{{Key: "k", Count: 1,
			Limit: inline(Limit{Algorithm: TokenBucket, Limit: 0, Period: time.Second})}}},
			StatusInvalidLimit, "limit 0 must be positive"},
		{"set rate 0", &SetLimit{Key: "k", Limit: Limit{Algorithm: TokenBucket, Period: time.Second}},
			StatusInvalidLimit, `key "k": limit 0 must be positive`},
		{"set negative period", &SetLimit{Key: "k", Limit: Limit{Algorithm: TokenBucket, Limit: 5, Period: -1}},
			StatusInvalidLimit, "period -1ns must be positive"},
		{"set unknown algorithm", &SetLimit{Key: "k", Limit: Limit{Algorithm: 4, Limit: 5, Period: time.Second}},
			StatusInvalidLimit, "unknown algorithm 4"},
		{"set no algorithm", &SetLimit{Key: "k", Limit: Limit{Limit: 5, Period: time.Second}},
			StatusInvalidLimit, "unknown algorithm 0"},
		{"set negative burst", &SetLimit{Key: "k", Limit: Limit{Algorithm: TokenBucket, Limit: 5, Period: time.Second, Burst: -1}},
			StatusInvalidLimit, "burst -1 must not be negative"},
		{"set window of 65 slots", &SetLimit{Key: "k", Limit: Limit{Algorithm: SlidingWindow, Limit: 5, Period: time.Second, Slots: 65}},
			StatusInvalidLimit, "slots 65 must be in [1, 64]"},
		{"set max lease above a minute", &SetLimit{Key: "k", Limit: Limit{Algorithm: TokenBucket, Limit: 5, Period: time.Second, MaxLease: MaxLeaseTTL + 1}},
			StatusInvalidLimit, "max lease 1m0.000000001s must be in [0, 1m0s]"},
		{"set empty key", &SetLimit{Key: "", Limit: bucket10},
			StatusInvalidKey, "key is empty"},
		{"delete key of 513 bytes", &DeleteLimit{Key: long},
			StatusInvalidKey, "key is 513 bytes"},
		{"negative ttl", &Acquire{Items: []Item{{Key: "k", Count: 1}}, TTL: -1},
			StatusInvalidTTL, "lease TTL -1ns is negative"},
		{"no items", &Acquire{},
			StatusInvalidRequest, "acquire names no key"},
		{"MaxItems items", &Acquire{Items: items(MaxItems)},
			StatusOK, ""},
		{"MaxItems+1 items", &Acquire{Items: items(MaxItems + 1)},
			StatusInvalidRequest, "acquire names 9 keys; the most is 8"},
		{"duplicate key", &Acquire{Items: []Item{{Key: "k", Count: 1}, {Key: "j", Count: 1, Limit: &bucket10}, {Key: "k", Count: 1}}},
			StatusInvalidRequest, `key "k" is named twice`},
		{"concurrency key with ttl 0", &Acquire{Items: []Item{{Key: "c", Count: 1}}},
			StatusInvalidTTL, `key "c" is a concurrency limit: it needs a lease TTL above 0`},
		{"concurrency key with a strict bucket that cannot lease", &Acquire{
			Items: []Item{{Key: "c", Count: 1}, {Key: "strict", Count: 1}}, TTL: time.Second},
			StatusInvalidTTL, `key "c" is a concurrency limit`},
		{"release of a lease that never was", &Release{ClientID: "c1", Seq: 1, LeaseID: 99},
			StatusLeaseGone, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t)
			r.setLimit("k", bucket10)
			r.setLimit("c", conc3)
			// 1 token/s, burst 2, Λ = 2s: ⌈rΛ⌉ = 2 >= burst, so no leases.
			r.setLimit("strict", Limit{Algorithm: TokenBucket, Limit: 1, Period: time.Second, Burst: 2, Strict: true})
			var res Result
			func() {
				defer func() {
					if p := recover(); p != nil {
						t.Fatalf("Apply panicked on bad input: %v", p)
					}
				}()
				res = r.apply(tt.cmd)
			}()
			if res.Status != tt.status {
				t.Fatalf("status %v (%q), want %v", res.Status, res.Message, tt.status)
			}
			if !strings.Contains(res.Message, tt.message) {
				t.Errorf("message %q, want it to contain %q", res.Message, tt.message)
			}
			if tt.status.Invalid() && res.Message == "" {
				t.Errorf("invalid status %v without a message", res.Status)
			}
			if res.Time != r.now {
				t.Errorf("Time %d, want the log time %d", res.Time, r.now)
			}
			// Whatever the command was, "k" still holds its whole burst
			// unless the command was allowed to take from it.
			if tt.status != StatusOK {
				if got := r.remaining("k", 0); got != 10 {
					t.Errorf("after a rejected command, %q holds %d, want 10", "k", got)
				}
				if _, ok := inspectKey(t, r.m, "new"); ok {
					t.Errorf("a rejected command created key %q", "new")
				}
			}
		})
	}
}

// A multi-key acquire takes all of its counts or nothing.
func TestAllOrNothing(t *testing.T) {
	tests := []struct {
		name  string
		short Limit // the second key's limit, drained below the count asked
		ttl   time.Duration
	}{
		{"bucket short", Limit{Algorithm: TokenBucket, Limit: 3, Period: 30 * time.Second}, 0},
		{"window short", Limit{Algorithm: SlidingWindow, Limit: 3, Period: 30 * time.Second}, 0},
		{"concurrency short", Limit{Algorithm: Concurrency, Limit: 3}, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t)
			r.setLimit("a", bucket10)
			r.setLimit("b", tt.short)
			// Take 2 of b's 3: 1 left (a bucket refills 1 per 10s, so
			// nothing comes back within this test).
			r.ok(&Acquire{Items: []Item{{Key: "b", Count: 2}}, TTL: 5 * time.Second})

			res := r.apply(&Acquire{Items: []Item{{Key: "a", Count: 5}, {Key: "b", Count: 2}}, TTL: tt.ttl})
			if res.Status != StatusDenied {
				t.Fatalf("status %v, want denied", res.Status)
			}
			want := []ItemResult{{Granted: 0, Remaining: 10}, {Granted: 0, Remaining: 1}}
			if diff := cmp.Diff(want, res.Items); diff != "" {
				t.Errorf("items (-want +got):\n%s", diff)
			}
			if res.RetryAfter <= 0 {
				t.Errorf("RetryAfter %v, want positive", res.RetryAfter)
			}
			// Nothing was taken from a: all 10 are still there.
			res = r.ok(&Acquire{Items: []Item{{Key: "a", Count: 10}}})
			if res.Items[0].Granted != 10 || res.Items[0].Remaining != 0 {
				t.Errorf("a later acquire of all of a: %+v, want granted 10, remaining 0", res.Items[0])
			}
			// And b still has exactly its 1.
			if got := r.remaining("b", tt.ttl); got != 1 {
				t.Errorf("b holds %d, want 1", got)
			}
		})
	}
}

// ignoreAdvice compares Results without Result.Lessees, NoLimitKey and
// Decided, which a retried command's answer from the dedup table does not
// carry.
var ignoreAdvice = cmpopts.IgnoreFields(Result{}, "Lessees", "NoLimitKey", "Decided")

// TestDecidedOnlyWhenThisApplyDecided: a result says it was decided by the
// apply that returns it, and an answer the dedup table remembered says it
// was not, in a later entry, later in the same entry, after a snapshot and
// restore, and for a Stale or SeqReused result. The cluster tells a
// retried Acquire's client by this flag whether the answer's log time was
// stamped after that attempt was sent (a sliding window's pieces).
func TestDecidedOnlyWhenThisApplyDecided(t *testing.T) {
	r := newRig(t)
	r.setLimit("a", bucket10)
	r.setLimit("w", pacedWindow)
	acq := &Acquire{ClientID: "c1", Seq: 1, Items: []Item{{Key: "a", Count: 3}}, TTL: time.Second}
	if first := r.ok(acq); !first.Decided {
		t.Errorf("first apply: %+v, want Decided", first)
	}
	r.advance(time.Millisecond)
	if again := r.apply(acq); again.Decided || again.Status != StatusOK {
		t.Errorf("retry in a later entry: %+v, want the remembered ok, not Decided", again)
	}
	// A pieced lease, then its retry in the same entry.
	paced := &Acquire{ClientID: "c1", Seq: 2, Items: []Item{{Key: "w", Count: 1, Want: 20}}, TTL: 500 * time.Millisecond, Paced: true}
	rs := r.m.Apply(Encode(nil, r.now, &Batch{Commands: []Command{paced, paced}}))
	if len(rs) != 2 || !rs[0].Decided || rs[1].Decided || rs[0].Pieces == 0 {
		t.Fatalf("one entry with a paced acquire and its retry: %+v, want a pieced grant Decided, then its copy not", rs)
	}
	if diff := cmp.Diff(rs[0], rs[1], ignoreAdvice); diff != "" {
		t.Errorf("the retry's answer differs from the first (-first +retry):\n%s", diff)
	}
	// The dedup table survives a snapshot without the flag.
	r.m = restoreFrom(t, snapshotOf(t, r.m))
	r.advance(time.Millisecond)
	if again := r.apply(paced); again.Decided || again.Pieces != rs[0].Pieces || again.Time != rs[0].Time {
		t.Errorf("retry after a restore: %+v, want the remembered grant (time %d), not Decided", again, rs[0].Time)
	}
	reused := *acq
	reused.Items = []Item{{Key: "a", Count: 4}}
	if res := r.apply(&reused); res.Status != StatusSeqReused || res.Decided {
		t.Errorf("seq reused: %v, Decided %v; want seq-reused, not Decided", res.Status, res.Decided)
	}
	r.ok(&Acquire{ClientID: "c1", Seq: 3, AckedBelow: 3, Items: []Item{{Key: "a", Count: 1}}})
	if res := r.apply(acq); res.Status != StatusStale || res.Decided {
		t.Errorf("acknowledged seq retried: %v, Decided %v; want stale, not Decided", res.Status, res.Decided)
	}
	// Commands without a client id are never deduplicated: always Decided.
	if res := r.apply(&Acquire{Items: []Item{{Key: "a", Count: 1}}}); !res.Decided {
		t.Errorf("anonymous acquire: %+v, want Decided", res)
	}
	if res := r.apply(&SetLimit{Key: "b", Limit: bucket10}); !res.Decided {
		t.Errorf("set limit: %+v, want Decided", res)
	}
}

// TestNoLimitKeyNamesTheFirstItemWithoutALimit: a NoLimit result names the
// key the machine found without a limit, the first in item order that gave
// none (an item with an inline limit defines its key instead), for each
// command that may carry inline limits; the dedup table does not keep it.
func TestNoLimitKeyNamesTheFirstItemWithoutALimit(t *testing.T) {
	r := newRig(t)
	r.setLimit("set", bucket10)
	inline := &bucket10
	cmds := []Command{
		&Acquire{ClientID: "c", Seq: 1, Items: []Item{{Key: "set", Count: 1}, {Key: "inline-a", Count: 1, Limit: inline},
			{Key: "bare-a", Count: 1}, {Key: "bare-a2", Count: 1}}},
		&Charge{ClientID: "c", Seq: 2, Items: []ChargeItem{{Key: "set", Tokens: 1}, {Key: "inline-c", Tokens: 1, Limit: inline},
			{Key: "bare-c", Tokens: 1}, {Key: "bare-c2", Tokens: 1}}},
		&Restrict{ClientID: "c", Seq: 3, Items: []RestrictItem{{Key: "set", Remaining: 5}, {Key: "inline-r", Remaining: 5, Limit: inline},
			{Key: "bare-r", Remaining: 5}, {Key: "bare-r2", Remaining: 5}}},
	}
	for i, c := range cmds {
		want := []string{"bare-a", "bare-c", "bare-r"}[i]
		res := r.apply(c)
		if res.Status != StatusNoLimit || res.NoLimitKey != want {
			t.Errorf("%T: %v, NoLimitKey %q; want no-limit naming %q", c, res.Status, res.NoLimitKey, want)
		}
		if again := r.apply(c); again.Status != StatusNoLimit || again.NoLimitKey != "" {
			t.Errorf("%T retried: %v, NoLimitKey %q; want no-limit with the key unknown (not kept)", c, again.Status, again.NoLimitKey)
		}
	}
	if res := r.apply(&Acquire{ClientID: "c", Seq: 4, Items: []Item{{Key: "set", Count: 1}}}); res.NoLimitKey != "" {
		t.Errorf("a grant names NoLimitKey %q", res.NoLimitKey)
	}
}

func TestDedup(t *testing.T) {
	t.Run("retry returns the first result", func(t *testing.T) {
		r := newRig(t)
		r.setLimit("a", bucket10)
		acq := &Acquire{ClientID: "c1", Seq: 1, Items: []Item{{Key: "a", Count: 3}}, TTL: time.Second}
		first := r.ok(acq)
		// Granted 3 of 10 as a lease of 1s: 7 left.
		if first.Items[0] != (ItemResult{Granted: 3, Remaining: 7}) || first.LeaseID == 0 || first.TTL != time.Second {
			t.Fatalf("first result %+v", first)
		}
		r.advance(100 * time.Millisecond)
		again := r.apply(acq)
		if diff := cmp.Diff(first, again, ignoreAdvice); diff != "" {
			t.Errorf("retry result differs from the first (-first +retry):\n%s", diff)
		}
		// Lessees is advice the dedup table does not keep.
		if first.Lessees != 1 || again.Lessees != 0 {
			t.Errorf("lessees %d, then %d on the retry; want 1, then 0 (not kept)", first.Lessees, again.Lessees)
		}
		// Only the first took: 7 left, plus 0.1s of refill at 1/s = 0.1
		// token, which rounds down.
		if got := r.remaining("a", 0); got != 7 {
			t.Errorf("a holds %d after a retry, want 7", got)
		}
		// The same seq from another client is a different command.
		other := r.ok(&Acquire{ClientID: "c2", Seq: 1, Items: []Item{{Key: "a", Count: 3}}})
		if other.Items[0].Granted != 3 || other.Items[0].Remaining != 4 {
			t.Errorf("c2's seq 1: %+v, want granted 3, remaining 4", other.Items[0])
		}
		// A release is deduplicated too: its retry does not give up
		// the answer "ok" for "lease gone".
		rel := &Release{ClientID: "c1", Seq: 2, LeaseID: first.LeaseID}
		r.ok(rel)
		if res := r.apply(rel); res.Status != StatusOK {
			t.Errorf("retried release: %v, want the first result ok", res.Status)
		}
	})

	t.Run("acked_below makes older seqs stale", func(t *testing.T) {
		r := newRig(t)
		r.setLimit("a", Limit{Algorithm: TokenBucket, Limit: 100, Period: time.Second})
		acq := func(seq, acked uint64) *Acquire {
			return &Acquire{ClientID: "c1", Seq: seq, AckedBelow: acked, Items: []Item{{Key: "a", Count: 1}}}
		}
		var res [5]Result
		for seq := uint64(1); seq <= 3; seq++ {
			res[seq] = r.ok(acq(seq, 0))
		}
		res[4] = r.ok(acq(4, 3)) // the client has the replies of 1 and 2
		for seq, want := range map[uint64]Status{1: StatusStale, 2: StatusStale} {
			got := r.apply(acq(seq, 0))
			if got.Status != want || got.Message == "" || got.Time != r.now {
				t.Errorf("retry of seq %d: %+v, want %v with a message, at the log time", seq, got, want)
			}
		}
		for seq := uint64(3); seq <= 4; seq++ {
			if got := r.apply(acq(seq, 0)); !cmp.Equal(got, res[seq], ignoreAdvice) {
				t.Errorf("retry of seq %d: %+v, want the first result %+v", seq, got, res[seq])
			}
		}
		// Four taken, none by the stale retries: 96 left.
		if got := r.remaining("a", 0); got != 96 {
			t.Errorf("a holds %d, want 96", got)
		}
	})

	t.Run("at most MaxResultsPerClient results", func(t *testing.T) {
		r := newRig(t)
		r.setLimit("a", Limit{Algorithm: TokenBucket, Limit: 1000, Period: time.Hour})
		acq := func(seq uint64) *Acquire {
			return &Acquire{ClientID: "c1", Seq: seq, Items: []Item{{Key: "a", Count: 1}}}
		}
		// Seqs 1..258: the oldest two results are dropped.
		n := uint64(MaxResultsPerClient + 2)
		first := make(map[uint64]Result)
		for seq := uint64(1); seq <= n; seq++ {
			first[seq] = r.ok(acq(seq))
		}
		for _, seq := range []uint64{1, 2} {
			if got := r.apply(acq(seq)); got.Status != StatusStale {
				t.Errorf("retry of seq %d: %v, want stale", seq, got.Status)
			}
		}
		for _, seq := range []uint64{3, 100, n} {
			if got := r.apply(acq(seq)); !cmp.Equal(got, first[seq], ignoreAdvice) {
				t.Errorf("retry of seq %d: %+v, want the first result %+v", seq, got, first[seq])
			}
		}
		if got, want := r.remaining("a", 0), int64(1000)-int64(n); got != want {
			t.Errorf("a holds %d, want %d", got, want)
		}
	})

	// A session idle for longer than SessionTTL is forgotten with all its
	// results. The consequence: a retry that old is applied again. For an
	// acquire that takes the tokens a second time (the first grant was never
	// delivered, so they are wasted, never over-admitted); a release stays
	// harmless, as a lease can be released only once.
	t.Run("idle session is forgotten", func(t *testing.T) {
		r := newRig(t)
		// 10 per hour: nothing refills during the test.
		r.setLimit("a", Limit{Algorithm: TokenBucket, Limit: 10, Period: time.Hour})
		acq := &Acquire{ClientID: "c1", Seq: 1, Items: []Item{{Key: "a", Count: 2}}, TTL: time.Second}
		first := r.ok(acq)
		rel := &Release{ClientID: "c1", Seq: 2, LeaseID: first.LeaseID}
		r.ok(rel)
		// Refunded: 10 again.
		if got := r.remaining("a", 0); got != 10 {
			t.Fatalf("a holds %d after the release, want 10", got)
		}

		r.advance(SessionTTL) // not yet idle for more than SessionTTL
		r.ok(&Acquire{ClientID: "c2", Seq: 1, Items: []Item{{Key: "a", Count: 1}}})
		if _, ok := r.m.sessions["c1"]; !ok {
			t.Fatal("session forgotten after exactly SessionTTL")
		}
		r.advance(1)
		r.ok(&Acquire{ClientID: "c2", Seq: 2, Items: []Item{{Key: "a", Count: 1}}})
		if _, ok := r.m.sessions["c1"]; ok {
			t.Fatal("session still remembered after SessionTTL+1ns")
		}
		// 10 - 2 taken by c2 = 8. The retry of c1's acquire applies
		// again and takes 2 more.
		again := r.ok(acq)
		if again.Items[0] != (ItemResult{Granted: 2, Remaining: 6}) || again.LeaseID == first.LeaseID || again.Time != r.now {
			t.Errorf("retry after the session expired: %+v, want a new grant of 2 leaving 6", again)
		}
		// The old release cannot refund twice.
		if res := r.apply(rel); res.Status != StatusLeaseGone {
			t.Errorf("retried release after the session expired: %v, want lease-gone", res.Status)
		}
		if got := r.remaining("a", 0); got != 6 {
			t.Errorf("a holds %d, want 6", got)
		}
	})
}

// TestReleaseReusingAnAcquiresSeqIsRefused: a Release that reused an
// Acquire's (client_id, seq) got the Acquire's result, which the node
// reported as released:true for lease 12345, which never existed (issue
// 13). A remembered result answers only a command with the same body (its
// digest); any other gets StatusSeqReused and nothing is applied.
func TestReleaseReusingAnAcquiresSeqIsRefused(t *testing.T) {
	r := newRig(t)
	r.setLimit("a", bucket10)
	acq := &Acquire{ClientID: "c1", Seq: 1, Items: []Item{{Key: "a", Count: 3}}, TTL: time.Second}
	first := r.ok(acq)
	if res := r.apply(&Release{ClientID: "c1", Seq: 1, LeaseID: 12345}); res.Status != StatusSeqReused ||
		!strings.Contains(res.Message, "seq 1") || !res.Status.Invalid() {
		t.Errorf("Release reusing the Acquire's seq: %+v, want seq-reused, an Invalid status", res)
	}
	for _, c := range []*Acquire{
		{ClientID: "c1", Seq: 1, Items: []Item{{Key: "a", Count: 4}}, TTL: time.Second},
		{ClientID: "c1", Seq: 1, Items: []Item{{Key: "a", Count: 3, Want: 4}}, TTL: time.Second},
		{ClientID: "c1", Seq: 1, Items: []Item{{Key: "b", Count: 3}}, TTL: time.Second},
		{ClientID: "c1", Seq: 1, Items: []Item{{Key: "a", Count: 3, Limit: &bucket10}}, TTL: time.Second},
		{ClientID: "c1", Seq: 1, Items: []Item{{Key: "a", Count: 3}}},
		{ClientID: "c1", Seq: 1, Items: []Item{{Key: "a", Count: 3}, {Key: "b", Count: 1}}, TTL: time.Second},
	} {
		if res := r.apply(c); res.Status != StatusSeqReused {
			t.Errorf("%+v reusing seq 1: %v, want seq-reused", c, res.Status)
		}
	}
	// What a retry may change (acked_below, the stamp) is not the body.
	r.advance(time.Millisecond)
	retry := *acq
	retry.AckedBelow = 1
	// Lessees is advice, not kept with the result (see Result.Lessees).
	if diff := cmp.Diff(first, r.apply(&retry), ignoreAdvice); diff != "" {
		t.Errorf("a retry with a new acked_below (-first +retry):\n%s", diff)
	}
	// Nothing was applied: the lease is there, 3 of 10 taken.
	if got := r.remaining("a", 0); got != 7 {
		t.Errorf("a holds %d, want 7", got)
	}
	if r.m.leases.get(first.LeaseID) == nil {
		t.Error("the Acquire's lease is gone")
	}
	// And a Release's seq reused by an Acquire, the other way round.
	rel := &Release{ClientID: "c1", Seq: 2, LeaseID: first.LeaseID, Unused: []int64{3}}
	r.ok(rel)
	if res := r.apply(&Acquire{ClientID: "c1", Seq: 2, Items: []Item{{Key: "a", Count: 1}}}); res.Status != StatusSeqReused {
		t.Errorf("Acquire reusing the Release's seq: %v, want seq-reused", res.Status)
	}
	if res := r.apply(&Release{ClientID: "c1", Seq: 2, LeaseID: first.LeaseID, Unused: []int64{2}}); res.Status != StatusSeqReused {
		t.Errorf("Release reusing seq 2 with other unused counts: %v, want seq-reused", res.Status)
	}
	if res := r.apply(rel); res.Status != StatusOK {
		t.Errorf("the Release retried: %v, want its first result ok", res.Status)
	}
}

// TestRetryWithTheSpanGetsTheSpanlessResult: cluster leaves an Acquire's
// span out while a replica may predate the field, so a request's first
// attempt may be applied without it and its retry, once the level has
// risen, sent with it. The retry is the same request: it gets the
// remembered result, nothing is applied again. A body that differs in
// anything else, or in its span from a spanned attempt, is a reused seq.
func TestRetryWithTheSpanGetsTheSpanlessResult(t *testing.T) {
	r := newRig(t)
	r.setLimit("w", window5)
	item := []Item{{Key: "w", Count: 1}}
	first := r.ok(&Acquire{ClientID: "c1", Seq: 1, Items: item})
	r.advance(time.Millisecond)
	if diff := cmp.Diff(first, r.apply(&Acquire{ClientID: "c1", Seq: 1, Items: item, Span: time.Second}), ignoreAdvice); diff != "" {
		t.Errorf("the spanless attempt retried with a span (-first +retry):\n%s", diff)
	}
	spanned := r.ok(&Acquire{ClientID: "c1", Seq: 2, Items: item, Span: time.Second})
	for _, c := range []*Acquire{
		{ClientID: "c1", Seq: 1, Items: []Item{{Key: "w", Count: 2}}, Span: time.Second},
		{ClientID: "c1", Seq: 1, Items: item, TTL: time.Second, Span: time.Second},
		{ClientID: "c1", Seq: 2, Items: item, Span: 2 * time.Second},
		// The other way round (the level fell between attempts) the
		// spanned body's digest cannot be undone: refused.
		{ClientID: "c1", Seq: 2, Items: item},
	} {
		if res := r.apply(c); res.Status != StatusSeqReused {
			t.Errorf("%+v: %v, want seq-reused", c, res.Status)
		}
	}
	if got := r.remaining("w", 0); got != 3 {
		t.Errorf("w has %d left, want 3 (seqs 1 and 2 applied once each)", got)
	}
	if diff := cmp.Diff(spanned, r.apply(&Acquire{ClientID: "c1", Seq: 2, Items: item, Span: time.Second}), ignoreAdvice); diff != "" {
		t.Errorf("the spanned attempt retried (-first +retry):\n%s", diff)
	}
}

// The canonical form of a command reads its decoded values: two encodings
// of one Release (unused packed, as Encode writes it, or one varint each, as
// protobuf also allows) have one digest.
func TestDigestIsCanonical(t *testing.T) {
	packed := Encode(nil, 5, &Release{ClientID: "c", Seq: 1, LeaseID: 9, Unused: []int64{1, 300}})
	unpacked := []byte{byte(TypeRelease)}
	unpacked = protowire.AppendTag(unpacked, fTime, protowire.VarintType)
	unpacked = protowire.AppendVarint(unpacked, 7) // another stamp
	unpacked = protowire.AppendTag(unpacked, fClientID, protowire.BytesType)
	unpacked = protowire.AppendString(unpacked, "c")
	unpacked = protowire.AppendTag(unpacked, fSeq, protowire.VarintType)
	unpacked = protowire.AppendVarint(unpacked, 1)
	unpacked = protowire.AppendTag(unpacked, fAckedBelow, protowire.VarintType)
	unpacked = protowire.AppendVarint(unpacked, 1) // another acked_below
	unpacked = protowire.AppendTag(unpacked, fReleaseLease, protowire.VarintType)
	unpacked = protowire.AppendVarint(unpacked, 9)
	for _, u := range []uint64{1, 300} {
		unpacked = protowire.AppendTag(unpacked, fReleaseUnused, protowire.VarintType)
		unpacked = protowire.AppendVarint(unpacked, u)
	}
	m := New()
	digestOf := func(e []byte) digest {
		var d decoder
		if err := d.decode(e, false); err != nil {
			t.Fatal(err)
		}
		return m.digest(&d)
	}
	if a, b := digestOf(packed), digestOf(unpacked); a != b || a == 0 {
		t.Errorf("digests %#x and %#x of one Release, encoded two ways", a, b)
	}
	other := Encode(nil, 5, &Release{ClientID: "c", Seq: 1, LeaseID: 9, Unused: []int64{300, 1}})
	if digestOf(other) == digestOf(packed) {
		t.Error("unused counts in another order have the same digest")
	}
}

// Log time never goes backwards: a stamp older than the last applied one is
// clamped to it.
func TestLogTimeClamped(t *testing.T) {
	r := newRig(t)
	// 1 token per second, burst 1.
	r.setLimit("a", Limit{Algorithm: TokenBucket, Limit: 1, Period: time.Second})
	t10 := r.now + int64(10*time.Second)
	r.now = t10
	if res := r.ok(&Acquire{Items: []Item{{Key: "a", Count: 1}}}); res.Time != t10 {
		t.Fatalf("Time %d, want %d", res.Time, t10)
	}
	// Stamped 5s earlier. Applied at t10, the bucket is empty and refills
	// its token 1s later. Had the machine gone back to t10-5s, it would
	// answer 6s (and a stamp further back could refill in the past).
	r.now = t10 - int64(5*time.Second)
	res := r.apply(&Acquire{Items: []Item{{Key: "a", Count: 1}}})
	if res.Time != t10 || res.Status != StatusDenied || res.RetryAfter != time.Second {
		t.Errorf("acquire stamped in the past: %+v, want denied at %d with RetryAfter 1s", res, t10)
	}
	if r.m.Now() != t10 {
		t.Errorf("Now %d, want %d", r.m.Now(), t10)
	}
	// Time goes on from t10, not from the earlier stamp: 1s later the token
	// is back.
	r.now = t10 + int64(time.Second)
	if res := r.apply(&Acquire{Items: []Item{{Key: "a", Count: 1}}}); res.Status != StatusOK || res.Time != r.now {
		t.Errorf("acquire 1s after t10: %+v, want ok at %d", res, r.now)
	}
	// A batch applies at its own (clamped) stamp.
	r.now = 0
	got := r.m.Apply(Encode(nil, r.now, &Batch{Commands: []Command{
		&DeleteLimit{Key: "x"}, &SetLimit{Key: "y", Limit: bucket10},
	}}))
	for i, res := range got {
		if res.Time != t10+int64(time.Second) {
			t.Errorf("batch result %d: Time %d, want %d", i, res.Time, t10+int64(time.Second))
		}
	}
}

func TestRelease(t *testing.T) {
	// Grant from a full bucket10 (1 token/s, burst 10): count 2, want 6.
	// After the count 8 are left and no other lease is live, so the fair
	// share is 8/1 and the whole want is granted: 6, leaving 4.
	grant := func(r *rig) Result {
		r.t.Helper()
		r.setLimit("a", bucket10)
		res := r.ok(&Acquire{ClientID: "c1", Seq: 1, Items: []Item{{Key: "a", Count: 2, Want: 6}}, TTL: 2 * time.Second})
		if res.Items[0] != (ItemResult{Granted: 6, Remaining: 4}) || res.LeaseID == 0 || res.TTL != 2*time.Second {
			r.t.Fatalf("grant: %+v", res)
		}
		return res
	}

	t.Run("refunds unused exactly once", func(t *testing.T) {
		r := newRig(t)
		l := grant(r)
		// Spent 2 of the 6; 4 come back: 4 + 4 = 8.
		r.ok(&Release{ClientID: "c1", Seq: 2, LeaseID: l.LeaseID, Unused: []int64{4}})
		if got := r.remaining("a", 0); got != 8 {
			t.Fatalf("a holds %d after the release, want 8", got)
		}
		res := r.apply(&Release{ClientID: "c1", Seq: 3, LeaseID: l.LeaseID, Unused: []int64{4}})
		if res.Status != StatusLeaseGone {
			t.Errorf("second release: %v, want lease-gone", res.Status)
		}
		if got := r.remaining("a", 0); got != 8 {
			t.Errorf("a holds %d after the second release, want still 8", got)
		}
	})

	t.Run("empty unused refunds everything", func(t *testing.T) {
		r := newRig(t)
		l := grant(r)
		r.ok(&Release{ClientID: "c1", Seq: 2, LeaseID: l.LeaseID})
		if got := r.remaining("a", 0); got != 10 {
			t.Errorf("a holds %d, want 10", got)
		}
	})

	t.Run("after expiry refunds nothing", func(t *testing.T) {
		r := newRig(t)
		l := grant(r)
		r.advance(2 * time.Second) // the lease's whole TTL
		res := r.apply(&Release{ClientID: "c1", Seq: 2, LeaseID: l.LeaseID, Unused: []int64{6}})
		if res.Status != StatusLeaseGone {
			t.Errorf("release at expiry: %v, want lease-gone", res.Status)
		}
		// 4 left + 2s of refill at 1/s = 6; a refund would make it 10.
		if got := r.remaining("a", 0); got != 6 {
			t.Errorf("a holds %d, want 6", got)
		}
	})

	t.Run("by another client is rejected", func(t *testing.T) {
		r := newRig(t)
		l := grant(r)
		res := r.apply(&Release{ClientID: "c2", Seq: 1, LeaseID: l.LeaseID})
		if res.Status != StatusInvalidRequest || !strings.Contains(res.Message, "belongs to another client") {
			t.Errorf("release by c2: %+v, want invalid-request", res)
		}
		if got := r.remaining("a", 0); got != 4 {
			t.Errorf("a holds %d after c2's release, want 4", got)
		}
		// The owner still can.
		r.ok(&Release{ClientID: "c1", Seq: 2, LeaseID: l.LeaseID})
		if got := r.remaining("a", 0); got != 10 {
			t.Errorf("a holds %d after c1's release, want 10", got)
		}
	})

	t.Run("bad unused", func(t *testing.T) {
		for _, unused := range [][]int64{{1, 1}, {-1}, {7}} {
			r := newRig(t)
			l := grant(r)
			res := r.apply(&Release{ClientID: "c1", Seq: 2, LeaseID: l.LeaseID, Unused: unused})
			if res.Status != StatusInvalidCount || res.Message == "" {
				t.Errorf("unused %v: %+v, want invalid-count", unused, res)
			}
			if got := r.remaining("a", 0); got != 4 {
				t.Errorf("unused %v: a holds %d, want 4", unused, got)
			}
		}
	})

	t.Run("multi-key", func(t *testing.T) {
		r := newRig(t)
		r.setLimit("a", bucket10)
		r.setLimit("w", window5)
		l := r.ok(&Acquire{ClientID: "c1", Seq: 1, Items: []Item{{Key: "a", Count: 3}, {Key: "w", Count: 4}}, TTL: time.Second})
		if got := r.remaining("w", 0); got != 1 {
			t.Fatalf("w holds %d, want 1", got)
		}
		// Of w's 4, 1 was spent: 3 come back, 2 in all. Of a's 3, all
		// spent.
		r.ok(&Release{ClientID: "c1", Seq: 2, LeaseID: l.LeaseID, Unused: []int64{0, 3}})
		if got := r.remaining("w", 0); got != 4 {
			t.Errorf("w holds %d, want 4", got)
		}
		if got := r.remaining("a", 0); got != 7 {
			t.Errorf("a holds %d, want 7", got)
		}
	})

	t.Run("concurrency units come back", func(t *testing.T) {
		r := newRig(t)
		r.setLimit("c", conc3)
		l := r.ok(&Acquire{ClientID: "c1", Seq: 1, Items: []Item{{Key: "c", Count: 2}}, TTL: time.Second})
		if l.Items[0] != (ItemResult{Granted: 2, Remaining: 1}) {
			t.Fatalf("grant: %+v", l.Items[0])
		}
		res := r.apply(&Acquire{ClientID: "c1", Seq: 2, Items: []Item{{Key: "c", Count: 2}}, TTL: time.Second})
		// Units come back at the latest a max lease (default 2s) later.
		if res.Status != StatusDenied || res.RetryAfter != DefaultMaxLease {
			t.Fatalf("second acquire of 2: %+v, want denied with RetryAfter %v", res, DefaultMaxLease)
		}
		// Release, even with "unused" 0: units are held, not spent.
		r.ok(&Release{ClientID: "c1", Seq: 3, LeaseID: l.LeaseID, Unused: []int64{0}})
		l2 := r.ok(&Acquire{ClientID: "c1", Seq: 4, Items: []Item{{Key: "c", Count: 3}}, TTL: time.Second})
		if got := r.remaining("c", time.Second); got != 0 {
			t.Fatalf("c has %d free, want 0", got)
		}
		// On expiry too.
		r.advance(time.Second)
		if got := r.remaining("c", time.Second); got != 3 {
			t.Errorf("c has %d free after the lease expired, want 3", got)
		}
		if res := r.apply(&Release{ClientID: "c1", Seq: 5, LeaseID: l2.LeaseID}); res.Status != StatusLeaseGone {
			t.Errorf("release after expiry: %v, want lease-gone", res.Status)
		}
		if got := r.remaining("c", time.Second); got != 3 {
			t.Errorf("c has %d free, want 3", got)
		}
	})
}

// A strict bucket of burst B, rate r and MaxLease Λ holds back ⌈rΛ⌉ from every
// grant, so it admits at most B - ⌈rΛ⌉ at once; when ⌈rΛ⌉ >= B it grants no
// leases at all.
func TestStrict(t *testing.T) {
	tests := []struct {
		name    string
		lim     Limit
		most    int64         // B - ⌈rΛ⌉, or B when no lease is possible
		wantTTL time.Duration // granted for an asked TTL of 1s
	}{
		// r = 2/s, Λ = 2s (the default): ⌈rΛ⌉ = 4, 10-4 = 6.
		{"integral reserve", Limit{Algorithm: TokenBucket, Limit: 2, Period: time.Second, Burst: 10, Strict: true}, 6, time.Second},
		// r = 3/s, Λ = 333333334ns: rΛ = 1.000000002, ⌈rΛ⌉ = 2, 10-2 = 8.
		{"fractional reserve rounds up", Limit{Algorithm: TokenBucket, Limit: 3, Period: time.Second, Burst: 10, Strict: true,
			MaxLease: 333333334}, 8, 333333334},
		// r = 1/10s, Λ = 1ns: rΛ = 1e-10, ⌈rΛ⌉ = 1.
		{"tiny reserve rounds up to 1", Limit{Algorithm: TokenBucket, Limit: 1, Period: 10 * time.Second, Burst: 5, Strict: true,
			MaxLease: 1}, 4, 1},
		// r = 2/s, Λ = 2s: ⌈rΛ⌉ = 4 >= 4: no leases, nothing held back.
		{"reserve equals burst", Limit{Algorithm: TokenBucket, Limit: 2, Period: time.Second, Burst: 4, Strict: true}, 4, 0},
		// r = 2/s, Λ = 2s: ⌈rΛ⌉ = 4 >= 3.
		{"reserve above burst", Limit{Algorithm: TokenBucket, Limit: 2, Period: time.Second, Burst: 3, Strict: true}, 3, 0},
		// Not strict: the whole burst.
		{"not strict", Limit{Algorithm: TokenBucket, Limit: 2, Period: time.Second, Burst: 10}, 10, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t)
			r.setLimit("s", tt.lim)
			if got := r.remaining("s", 0); got != tt.most {
				t.Errorf("a full bucket offers %d, want %d", got, tt.most)
			}
			// More than that is never possible.
			res := r.apply(&Acquire{Items: []Item{{Key: "s", Count: tt.most + 1}}})
			if res.Status != StatusDenied || res.RetryAfter != limiter.Never {
				t.Errorf("count %d: %+v, want denied forever", tt.most+1, res)
			}
			// A lease asking for everything gets exactly that. (Count
			// is all of it: taking 1 and then the rest may get one
			// token less, as each take's cost rounds up.)
			res = r.ok(&Acquire{ClientID: "c", Seq: 1, Items: []Item{{Key: "s", Count: tt.most, Want: 1000}}, TTL: time.Second})
			if res.Items[0] != (ItemResult{Granted: tt.most, Remaining: 0}) {
				t.Errorf("want 1000: %+v, want granted %d, remaining 0", res.Items[0], tt.most)
			}
			if res.TTL != tt.wantTTL || (res.LeaseID != 0) != (tt.wantTTL != 0) {
				t.Errorf("granted TTL %v lease %d, want TTL %v", res.TTL, res.LeaseID, tt.wantTTL)
			}
		})
	}
}

// Keys created by an inline limit are forgotten once their state carries no
// information; keys set by SetLimit, or with a live lease, are kept.
func TestIdleExpiry(t *testing.T) {
	r := newRig(t)
	// Refills fully in 1s; leases of up to a minute.
	tmp := Limit{Algorithm: TokenBucket, Limit: 10, Period: time.Second, MaxLease: time.Minute}
	win := Limit{Algorithm: SlidingWindow, Limit: 10, Period: time.Second}
	cc := Limit{Algorithm: Concurrency, Limit: 3, MaxLease: time.Minute}
	r.setLimit("pinned", tmp)
	r.ok(&Acquire{Items: []Item{{Key: "tmp", Count: 5, Limit: &tmp}}})
	r.ok(&Acquire{Items: []Item{{Key: "win", Count: 5, Limit: &win}}})
	r.ok(&Acquire{Items: []Item{{Key: "cc", Count: 1, Limit: &cc}}, TTL: 30 * time.Second})
	leased := r.ok(&Acquire{ClientID: "c", Seq: 1, Items: []Item{{Key: "leased", Count: 1, Limit: &tmp}}, TTL: 30 * time.Second})
	if limitSlotsInUse(r.m) != 3 {
		t.Fatalf("%d limit definitions, want 3", limitSlotsInUse(r.m))
	}
	if v, ok := inspectKey(t, r.m, "win"); !ok || v.Window == nil {
		t.Fatalf("window key: %+v %v", v, ok)
	}
	// Idle, but still refilling: nothing can be forgotten yet.
	for range 20 {
		r.apply(&DeleteLimit{Key: "nothing"})
	}
	for _, k := range []string{"pinned", "tmp", "win", "cc", "leased"} {
		if _, ok := inspectKey(t, r.m, k); !ok {
			t.Errorf("key %q forgotten while it holds state", k)
		}
	}

	// 2s later the bucket is full and the window's 1s (plus a slot) has
	// passed: each command sweeps two keys, so 20 commands see them all.
	r.advance(2 * time.Second)
	for range 20 {
		r.apply(&DeleteLimit{Key: "nothing"})
	}
	for _, k := range []string{"tmp", "win"} {
		if _, ok := inspectKey(t, r.m, k); ok {
			t.Errorf("idle key %q still held", k)
		}
	}
	for _, k := range []string{"pinned", "cc", "leased"} {
		if _, ok := inspectKey(t, r.m, k); !ok {
			t.Errorf("key %q forgotten while pinned or leased", k)
		}
	}
	// The window's definition went with its only key; tmp's is still used.
	if n := limitSlotsInUse(r.m); n != 2 {
		t.Errorf("%d limit definitions, want 2 (tmp's and cc's)", n)
	}
	if len(r.m.limits.free) != 1 {
		t.Errorf("limit free list %v, want one freed id", r.m.limits.free)
	}

	// Releasing the lease lets its key go; the concurrency key goes when
	// its lease expires and its unit comes back.
	r.ok(&Release{ClientID: "c", Seq: 2, LeaseID: leased.LeaseID})
	r.advance(30 * time.Second)
	for range 20 {
		r.apply(&DeleteLimit{Key: "nothing"})
	}
	for _, k := range []string{"leased", "cc"} {
		if v, ok := inspectKey(t, r.m, k); ok {
			t.Errorf("key %q still held after its lease ended: %+v", k, v)
		}
	}
	if v, ok := inspectKey(t, r.m, "pinned"); !ok || !v.Pinned {
		t.Errorf("pinned key: %+v %v", v, ok)
	}
	if len(r.m.entries) != 1 || len(r.m.windows) != 0 || leasedKeys(r.m) != 0 || r.m.leases.len() != 0 {
		t.Errorf("left: %d entries, %d windows, %d active, %d leases; want only the pinned key",
			len(r.m.entries), len(r.m.windows), leasedKeys(r.m), r.m.leases.len())
	}
	// A forgotten key comes back full.
	if res := r.ok(&Acquire{Items: []Item{{Key: "tmp", Count: 10, Limit: &tmp}}}); res.Items[0].Granted != 10 {
		t.Errorf("re-created key: %+v", res.Items[0])
	}
}

func TestSetLimitChanges(t *testing.T) {
	t.Run("bucket to bucket keeps the debt", func(t *testing.T) {
		r := newRig(t)
		r.setLimit("a", bucket10) // 1/s
		r.ok(&Acquire{Items: []Item{{Key: "a", Count: 10}}})
		// TAT is now+10s. At 2/s with burst 20, 10s of debt is 20 tokens:
		// empty, and 1s later 2 tokens.
		r.setLimit("a", Limit{Algorithm: TokenBucket, Limit: 20, Period: 10 * time.Second})
		if got := r.remaining("a", 0); got != 0 {
			t.Errorf("a holds %d right after the change, want 0", got)
		}
		r.advance(time.Second)
		if got := r.remaining("a", 0); got != 2 {
			t.Errorf("a holds %d 1s after the change, want 2", got)
		}
	})

	t.Run("algorithm change starts drained", func(t *testing.T) {
		r := newRig(t)
		r.setLimit("a", bucket10)
		r.setLimit("a", window5)
		if got := r.remaining("a", 0); got != 0 {
			t.Errorf("window holds %d right after the change, want 0", got)
		}
		r.setLimit("a", bucket10)
		if got := r.remaining("a", 0); got != 0 {
			t.Errorf("bucket holds %d right after the change, want 0", got)
		}
		r.advance(time.Second)
		if got := r.remaining("a", 0); got != 1 {
			t.Errorf("bucket holds %d 1s after the change, want 1", got)
		}
	})

	t.Run("same definition changes nothing but pins", func(t *testing.T) {
		r := newRig(t)
		r.ok(&Acquire{Items: []Item{{Key: "a", Count: 4, Limit: &bucket10}}})
		if v, _ := inspectKey(t, r.m, "a"); v.Pinned {
			t.Fatal("inline key pinned")
		}
		// Normalizes to the same: Burst 0 means Limit, MaxLease 0 means 2s.
		r.setLimit("a", Limit{Algorithm: TokenBucket, Limit: 10, Period: 10 * time.Second, Burst: 10, MaxLease: DefaultMaxLease})
		if v, _ := inspectKey(t, r.m, "a"); !v.Pinned {
			t.Error("SetLimit did not pin the key")
		}
		if got := r.remaining("a", 0); got != 6 {
			t.Errorf("a holds %d, want 6", got)
		}
	})

	t.Run("first inline definition wins", func(t *testing.T) {
		r := newRig(t)
		r.ok(&Acquire{Items: []Item{{Key: "a", Count: 4, Limit: &bucket10}}})
		big := Limit{Algorithm: TokenBucket, Limit: 1000, Period: time.Second}
		res := r.apply(&Acquire{Items: []Item{{Key: "a", Count: 7, Limit: &big}}})
		if res.Status != StatusDenied || res.Items[0].Remaining != 6 {
			t.Errorf("acquire with a bigger inline limit: %+v, want denied with 6 remaining", res)
		}
	})

	// Concurrency units held under the old definition stay held, and come
	// back when their lease ends.
	t.Run("concurrency keeps held units", func(t *testing.T) {
		r := newRig(t)
		r.setLimit("c", conc3)
		l := r.ok(&Acquire{ClientID: "c1", Seq: 1, Items: []Item{{Key: "c", Count: 2}}, TTL: time.Second})
		r.setLimit("c", Limit{Algorithm: Concurrency, Limit: 5})
		if got := r.remaining("c", time.Second); got != 3 {
			t.Fatalf("c has %d free after raising it to 5, want 3", got)
		}
		r.ok(&Release{ClientID: "c1", Seq: 2, LeaseID: l.LeaseID})
		if got := r.remaining("c", time.Second); got != 5 {
			t.Errorf("c has %d free after the release, want 5", got)
		}
		l = r.ok(&Acquire{ClientID: "c1", Seq: 3, Items: []Item{{Key: "c", Count: 4}}, TTL: time.Second})
		r.setLimit("c", Limit{Algorithm: Concurrency, Limit: 6})
		r.advance(time.Second)
		if got := r.remaining("c", time.Second); got != 6 {
			t.Errorf("c has %d free after the lease expired, want 6", got)
		}
	})

	// A lease granted before its key was deleted, or redefined in a way that
	// dropped the old state, gives nothing back to what replaced it.
	t.Run("old leases give nothing to a new key", func(t *testing.T) {
		r := newRig(t)
		r.setLimit("c", conc3)
		r.setLimit("other", conc3) // keeps conc3's limit id alive
		old := r.ok(&Acquire{ClientID: "c1", Seq: 1, Items: []Item{{Key: "c", Count: 3}}, TTL: 2 * time.Second})
		r.ok(&DeleteLimit{Key: "c"})
		r.setLimit("c", conc3) // same definition, same limit id
		r.ok(&Acquire{ClientID: "c2", Seq: 1, Items: []Item{{Key: "c", Count: 3}}, TTL: 10 * time.Second})
		// The old lease ends; the new holder still holds all 3.
		r.ok(&Release{ClientID: "c1", Seq: 2, LeaseID: old.LeaseID})
		if got := r.remaining("c", time.Second); got != 0 {
			t.Errorf("after an old lease's release, c has %d free, want 0", got)
		}

		r.setLimit("b", bucket10)
		r.setLimit("b2", bucket10)
		oldB := r.ok(&Acquire{ClientID: "c1", Seq: 3, Items: []Item{{Key: "b", Count: 10}}, TTL: 2 * time.Second})
		r.setLimit("b", window5)  // drains
		r.setLimit("b", bucket10) // drains again, same limit id as before
		r.ok(&Release{ClientID: "c1", Seq: 4, LeaseID: oldB.LeaseID})
		if got := r.remaining("b", 0); got != 0 {
			t.Errorf("after an old lease's release, b holds %d, want 0 (drained)", got)
		}
	})
}

// Deleting keys moves the idle sweep's cursor past the end of the key list;
// every state reached that way must still restore.
func TestSnapshotAfterDeletes(t *testing.T) {
	r := newRig(t)
	keys := []string{"a", "b", "c", "d", "e", "f"}
	for _, k := range keys {
		r.setLimit(k, bucket10)
	}
	for _, k := range keys {
		r.ok(&DeleteLimit{Key: k})
		snap := snapshotOf(t, r.m)
		m := New()
		if err := m.Restore(bytes.NewReader(snap)); err != nil {
			t.Fatalf("after deleting %q (sweep %d, %d keys): %v", k, r.m.sweep, len(r.m.entries), err)
		}
		if again := snapshotOf(t, m); !bytes.Equal(again, snap) {
			t.Fatalf("after deleting %q: restored machine snapshots differently", k)
		}
	}
}

// TestDeleteOfAKeyWithNoLimitSaidDeleted: DeleteLimit answered StatusOK
// whether or not the key had a limit, so `limits delete` of a misspelt key
// said it was deleted. Result.Found now says whether there was one to delete.
func TestDeleteOfAKeyWithNoLimitSaidDeleted(t *testing.T) {
	r := newRig(t)
	r.setLimit("pinned", bucket10)
	r.ok(&Acquire{ClientID: "c", Seq: 1, Items: []Item{{Key: "inline", Count: 1, Limit: &bucket10}}, TTL: time.Minute})
	for _, tc := range []struct {
		key   string
		found bool
		why   string
	}{
		{"nosuch", false, "a key never defined"},
		{"pinned", true, "a key set by SetLimit"},
		{"pinned", false, "the same key deleted again"},
		{"inline", true, "a key defined by an acquire's inline limit, leased"},
		{"inline", false, "a key deleted while leased (its lessees wait in orphans)"},
	} {
		if res := r.ok(&DeleteLimit{Key: tc.key}); res.Found != tc.found {
			t.Errorf("delete %q (%s): Found = %v, want %v", tc.key, tc.why, res.Found, tc.found)
		}
	}
	if res := r.ok(&SetLimit{Key: "pinned", Limit: bucket10}); res.Found {
		t.Error("SetLimit answered Found; only a DeleteLimit says it")
	}
}
