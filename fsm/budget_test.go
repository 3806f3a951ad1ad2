package fsm

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/leasehold/leasehold/limiter"
)

// level returns key's bucket level at the rig's time, negative in debt, read
// from the machine's internals: what a Charge's or Restrict's Remaining
// reports, reserve included.
func (r *rig) level(key string) int64 {
	r.t.Helper()
	i := r.m.keys.findString(r.m.entries, key)
	if i < 0 {
		r.t.Fatalf("key %q missing", key)
	}
	e := &r.m.entries[i]
	return r.m.limits.get(e.limit()).bucket.Level(limiter.BucketState{TAT: e.state}, r.now)
}

func TestCharge(t *testing.T) {
	ms := time.Millisecond
	// 10 per second, burst 10, may owe 5.
	debt := Limit{Algorithm: TokenBucket, Limit: 10, Period: time.Second, Burst: 10, MaxDebt: 5}

	t.Run("into debt, forgiven at the cap, repaid before a grant", func(t *testing.T) {
		r := newRig(t)
		r.setLimit("k", debt)
		r.ok(&Acquire{Items: []Item{{Key: "k", Count: 4}}})
		res := r.ok(&Charge{ClientID: "c", Seq: 1, Items: []ChargeItem{{Key: "k", Tokens: 9}}})
		// 6 held: 9 charged, owing 3; a token is back once 4 have
		// refilled, 400ms.
		want := Result{Status: StatusOK, Time: r.now, Decided: true, RetryAfter: 400 * ms, Items: []ItemResult{{Granted: 9, Remaining: -3}}}
		if diff := cmp.Diff(want, res); diff != "" {
			t.Errorf("charge (-want +got):\n%s", diff)
		}
		res = r.ok(&Charge{ClientID: "c", Seq: 2, Items: []ChargeItem{{Key: "k", Tokens: 7}}})
		want = Result{Status: StatusOK, Time: r.now, Decided: true, RetryAfter: 600 * ms, Items: []ItemResult{{Granted: 2, Remaining: -5}}}
		if diff := cmp.Diff(want, res); diff != "" {
			t.Errorf("charge beyond the cap (-want +got):\n%s", diff)
		}
		r.advance(599 * ms)
		if res := r.apply(&Acquire{Items: []Item{{Key: "k", Count: 1}}}); res.Status != StatusDenied || res.RetryAfter != ms {
			t.Errorf("acquire before the debt is repaid: %+v", res)
		}
		r.advance(ms)
		r.ok(&Acquire{Items: []Item{{Key: "k", Count: 1}}})
	})

	t.Run("no debt by default", func(t *testing.T) {
		r := newRig(t)
		r.setLimit("k", Limit{Algorithm: TokenBucket, Limit: 10, Period: time.Second})
		res := r.ok(&Charge{ClientID: "c", Seq: 1, Items: []ChargeItem{{Key: "k", Tokens: 25}}})
		if it := res.Items[0]; it != (ItemResult{Granted: 10, Remaining: 0}) {
			t.Errorf("charge of 25 of 10: %+v", it)
		}
	})

	t.Run("a strict bucket owes below its reserve", func(t *testing.T) {
		r := newRig(t)
		// 10/s, Λ 200ms: a reserve of 2 of the 10.
		r.setLimit("k", Limit{Algorithm: TokenBucket, Limit: 10, Period: time.Second, Burst: 10, Strict: true,
			MaxLease: 200 * ms, MaxDebt: 3})
		if got := r.remaining("k", 0); got != 8 {
			t.Fatalf("strict key offers %d, want 8", got)
		}
		res := r.ok(&Charge{ClientID: "c", Seq: 1, Items: []ChargeItem{{Key: "k", Tokens: 20}}})
		// From 8 grantable down to 3 below: 11 charged; the bucket itself
		// is 1 below empty.
		if it := res.Items[0]; it != (ItemResult{Granted: 11, Remaining: -3}) {
			t.Errorf("charge of a strict bucket: %+v", it)
		}
		if got := r.level("k"); got != -1 {
			t.Errorf("bucket level %d, want -1: 3 below the reserve of 2", got)
		}
	})

	t.Run("each item on its own, the command checked whole", func(t *testing.T) {
		r := newRig(t)
		r.setLimit("a", debt)
		r.setLimit("b", Limit{Algorithm: TokenBucket, Limit: 1, Period: time.Second, Burst: 2})
		res := r.ok(&Charge{ClientID: "c", Seq: 1, Items: []ChargeItem{{Key: "a", Tokens: 3}, {Key: "b", Tokens: 3},
			{Key: "new", Tokens: 1, Limit: &debt}}})
		want := []ItemResult{{Granted: 3, Remaining: 7}, {Granted: 2, Remaining: 0}, {Granted: 1, Remaining: 9}}
		if diff := cmp.Diff(want, res.Items); diff != "" {
			t.Errorf("items (-want +got):\n%s", diff)
		}
		// A bad item applies none: a's level stays.
		r.setLimit("conc", Limit{Algorithm: Concurrency, Limit: 3})
		r.setLimit("win", Limit{Algorithm: SlidingWindow, Limit: 3, Period: time.Second})
		for _, tt := range []struct {
			name   string
			items  []ChargeItem
			status Status
		}{
			{"a concurrency key", []ChargeItem{{Key: "a", Tokens: 1}, {Key: "conc", Tokens: 1}}, StatusInvalidRequest},
			{"a sliding window", []ChargeItem{{Key: "a", Tokens: 1}, {Key: "win", Tokens: 1}}, StatusInvalidRequest},
			{"no limit", []ChargeItem{{Key: "a", Tokens: 1}, {Key: "nolimit", Tokens: 1}}, StatusNoLimit},
			{"zero tokens", []ChargeItem{{Key: "a", Tokens: 1}, {Key: "b", Tokens: 0}}, StatusInvalidCount},
			{"negative tokens", []ChargeItem{{Key: "a", Tokens: -1}}, StatusInvalidCount},
			{"a key twice", []ChargeItem{{Key: "a", Tokens: 1}, {Key: "a", Tokens: 1}}, StatusInvalidRequest},
			{"no key", nil, StatusInvalidRequest},
			{"empty key", []ChargeItem{{Key: "", Tokens: 1}}, StatusInvalidKey},
			{"bad inline limit", []ChargeItem{{Key: "a", Tokens: 1}, {Key: "x", Tokens: 1,
				Limit: &Limit{Algorithm: TokenBucket, Limit: 1, Period: time.Second, MaxDebt: -1}}}, StatusInvalidLimit},
			{"nine keys", []ChargeItem{{Key: "1", Tokens: 1}, {Key: "2", Tokens: 1}, {Key: "3", Tokens: 1},
				{Key: "4", Tokens: 1}, {Key: "5", Tokens: 1}, {Key: "6", Tokens: 1}, {Key: "7", Tokens: 1},
				{Key: "8", Tokens: 1}, {Key: "9", Tokens: 1}}, StatusInvalidRequest},
		} {
			if res := r.apply(&Charge{Items: tt.items}); res.Status != tt.status || res.Message == "" {
				t.Errorf("%s: %v (%s), want %v with a message", tt.name, res.Status, res.Message, tt.status)
			}
		}
		if got := r.level("a"); got != 7 {
			t.Errorf("a's level %d after refused charges, want 7", got)
		}
		if _, ok := inspectKey(t, r.m, "x"); ok {
			t.Error("a refused charge created its key")
		}
	})

	t.Run("a retry charges once", func(t *testing.T) {
		r := newRig(t)
		r.setLimit("k", debt)
		c := &Charge{ClientID: "c", Seq: 1, Items: []ChargeItem{{Key: "k", Tokens: 12}}}
		first := r.ok(c)
		r.advance(10 * ms)
		if diff := cmp.Diff(first, r.apply(c), ignoreAdvice); diff != "" {
			t.Errorf("retry (-first +retry):\n%s", diff)
		}
		if got := r.level("k"); got != -2 {
			t.Errorf("level %d after a retried charge of 12, want -2 (charged once; 10ms is a tenth of a token)", got)
		}
		other := &Charge{ClientID: "c", Seq: 1, Items: []ChargeItem{{Key: "k", Tokens: 11}}}
		if res := r.apply(other); res.Status != StatusSeqReused {
			t.Errorf("seq 1 with another body: %v, want seq-reused", res.Status)
		}
		// In a batch, twice: once.
		r.setLimit("b", debt)
		c2 := &Charge{ClientID: "c", Seq: 2, Items: []ChargeItem{{Key: "b", Tokens: 4}}}
		rs := r.m.Apply(Encode(nil, r.now, &Batch{Commands: []Command{c2, c2}}))
		if len(rs) != 2 || rs[0].Status != StatusOK || !cmp.Equal(rs[0], rs[1], ignoreAdvice) {
			t.Errorf("a charge twice in a batch: %+v", rs)
		}
		if got := r.level("b"); got != 6 {
			t.Errorf("b's level %d, want 6", got)
		}
	})

	t.Run("a charge recreates a forgotten key", func(t *testing.T) {
		r := newRig(t)
		r.ok(&Acquire{Items: []Item{{Key: "k", Count: 1, Limit: &debt}}})
		r.advance(time.Minute)
		for range 10 { // let the sweep forget the full key
			r.ok(&DeleteLimit{Key: "unrelated"})
		}
		if _, ok := inspectKey(t, r.m, "k"); ok {
			t.Fatal("the idle key was not forgotten")
		}
		if res := r.apply(&Charge{ClientID: "c", Seq: 1, Items: []ChargeItem{{Key: "k", Tokens: 3}}}); res.Status != StatusNoLimit {
			t.Errorf("charge of a forgotten key without a limit: %v, want no-limit", res.Status)
		}
		res := r.ok(&Charge{ClientID: "c", Seq: 2, Items: []ChargeItem{{Key: "k", Tokens: 13, Limit: &debt}}})
		if it := res.Items[0]; it != (ItemResult{Granted: 13, Remaining: -3}) {
			t.Errorf("charge with the limit inline: %+v", it)
		}
		// In debt, it is not forgotten.
		for range 10 {
			r.ok(&DeleteLimit{Key: "unrelated"})
		}
		if _, ok := inspectKey(t, r.m, "k"); !ok {
			t.Error("a key in debt was forgotten")
		}
	})
}

func TestRestrict(t *testing.T) {
	ms, sec := time.Millisecond, time.Second
	// 10 per second, burst 10.
	lim := Limit{Algorithm: TokenBucket, Limit: 10, Period: sec, Burst: 10}

	t.Run("block", func(t *testing.T) {
		r := newRig(t)
		r.setLimit("k", lim)
		res := r.ok(&Restrict{ClientID: "c", Seq: 1, Items: []RestrictItem{{Key: "k", Remaining: NoRemaining, BlockFor: 2 * sec}}})
		// Empty 2s from now: 20 owed now, 30 taken away; a token at 2.1s.
		want := Result{Status: StatusOK, Time: r.now, Decided: true, RetryAfter: 2100 * ms, Items: []ItemResult{{Granted: 30, Remaining: -20}}}
		if diff := cmp.Diff(want, res); diff != "" {
			t.Errorf("block (-want +got):\n%s", diff)
		}
		r.advance(2*sec + 99*ms)
		if res := r.apply(&Acquire{Items: []Item{{Key: "k", Count: 1}}}); res.Status != StatusDenied {
			t.Errorf("acquire 1ms before the first token after the block: %v", res.Status)
		}
		r.advance(ms)
		r.ok(&Acquire{Items: []Item{{Key: "k", Count: 1}}})
		// Lowering an empty key to 5 changes nothing.
		res = r.ok(&Restrict{ClientID: "c", Seq: 2, Items: []RestrictItem{{Key: "k", Remaining: 5}}})
		if it := res.Items[0]; it != (ItemResult{}) {
			t.Errorf("lowering an empty key: %+v", it)
		}
	})

	t.Run("block capped at MaxBlock", func(t *testing.T) {
		r := newRig(t)
		r.setLimit("k", lim)
		res := r.ok(&Restrict{ClientID: "c", Seq: 1, Items: []RestrictItem{{Key: "k", Remaining: NoRemaining, BlockFor: 1000 * time.Hour}}})
		if res.RetryAfter != MaxBlock+100*ms {
			t.Errorf("a block of 1000h: RetryAfter %v, want MaxBlock + a token", res.RetryAfter)
		}
	})

	t.Run("lower never raises", func(t *testing.T) {
		r := newRig(t)
		r.setLimit("k", lim)
		res := r.ok(&Restrict{ClientID: "c", Seq: 1, Items: []RestrictItem{{Key: "k", Remaining: 4}}})
		if it := res.Items[0]; it != (ItemResult{Granted: 6, Remaining: 4}) {
			t.Errorf("lower to 4: %+v", it)
		}
		res = r.ok(&Restrict{ClientID: "c", Seq: 2, Items: []RestrictItem{{Key: "k", Remaining: 8}}})
		if it := res.Items[0]; it != (ItemResult{Remaining: 4}) {
			t.Errorf("lower to 8 after 4: %+v", it)
		}
		if got := r.remaining("k", 0); got != 4 {
			t.Errorf("k offers %d, want 4", got)
		}
		res = r.ok(&Restrict{ClientID: "c", Seq: 3, Items: []RestrictItem{{Key: "k", Remaining: 0, BlockFor: 500 * ms}}})
		if it := res.Items[0]; it != (ItemResult{Granted: 9, Remaining: -5}) {
			t.Errorf("lower to 0 and block 500ms: %+v", it)
		}
	})

	t.Run("strict: the reserve stays held back", func(t *testing.T) {
		r := newRig(t)
		// A reserve of 2.
		r.setLimit("k", Limit{Algorithm: TokenBucket, Limit: 10, Period: sec, Burst: 10, Strict: true, MaxLease: 200 * ms})
		res := r.ok(&Restrict{ClientID: "c", Seq: 1, Items: []RestrictItem{{Key: "k", Remaining: 3}}})
		if it := res.Items[0]; it != (ItemResult{Granted: 5, Remaining: 3}) {
			t.Errorf("lower a strict key to 3: %+v", it)
		}
		if got := r.remaining("k", 0); got != 3 {
			t.Errorf("k offers %d, want 3", got)
		}
		r.ok(&Restrict{ClientID: "c", Seq: 2, Items: []RestrictItem{{Key: "k", Remaining: NoRemaining, BlockFor: sec}}})
		r.advance(sec + 99*ms)
		if got := r.remaining("k", 0); got != 0 {
			t.Errorf("k offers %d 99ms after its block, want 0", got)
		}
		r.advance(ms)
		if got := r.remaining("k", 0); got != 1 {
			t.Errorf("k offers %d 100ms after its block, want 1", got)
		}
	})

	t.Run("refused", func(t *testing.T) {
		r := newRig(t)
		r.setLimit("k", lim)
		r.setLimit("conc", Limit{Algorithm: Concurrency, Limit: 3})
		for _, tt := range []struct {
			name   string
			items  []RestrictItem
			status Status
		}{
			{"nothing to do", []RestrictItem{{Key: "k", Remaining: NoRemaining}}, StatusInvalidRequest},
			{"negative remaining", []RestrictItem{{Key: "k", Remaining: -2}}, StatusInvalidCount},
			{"negative block", []RestrictItem{{Key: "k", Remaining: NoRemaining, BlockFor: -1}}, StatusInvalidTTL},
			{"a concurrency key", []RestrictItem{{Key: "k", Remaining: 1}, {Key: "conc", Remaining: 1}}, StatusInvalidRequest},
			{"no limit", []RestrictItem{{Key: "k", Remaining: 1}, {Key: "nolimit", Remaining: 1}}, StatusNoLimit},
		} {
			if res := r.apply(&Restrict{Items: tt.items}); res.Status != tt.status || res.Message == "" {
				t.Errorf("%s: %v (%s), want %v with a message", tt.name, res.Status, res.Message, tt.status)
			}
		}
		if got := r.remaining("k", 0); got != 10 {
			t.Errorf("k offers %d after refused restricts, want 10", got)
		}
		// With its limit inline, a Restrict creates the key, blocked.
		r.ok(&Restrict{Items: []RestrictItem{{Key: "fresh", Remaining: NoRemaining, BlockFor: sec, Limit: &lim}}})
		if res := r.apply(&Acquire{Items: []Item{{Key: "fresh", Count: 1}}}); res.Status != StatusDenied {
			t.Errorf("acquire of a key created blocked: %v", res.Status)
		}
	})
}

func TestExtend(t *testing.T) {
	sec := int64(time.Second)
	conc := Limit{Algorithm: Concurrency, Limit: 2, MaxLease: 10 * time.Second}
	bucket := Limit{Algorithm: TokenBucket, Limit: 10, Period: time.Second, MaxLease: 3 * time.Second}

	t.Run("a slot stays held, then comes back", func(t *testing.T) {
		r := newRig(t)
		r.setLimit("k", conc)
		g := r.ok(&Acquire{ClientID: "c", Seq: 1, Items: []Item{{Key: "k", Count: 1}}, TTL: 2 * time.Second})
		start := r.now
		r.advance(time.Second)
		res := r.ok(&Extend{ClientID: "c", Seq: 2, LeaseID: g.LeaseID, TTL: 5 * time.Second})
		if res.TTL != 5*time.Second || res.LeaseID != g.LeaseID {
			t.Errorf("extend: %+v, want TTL 5s", res)
		}
		// Asked beyond the key's MaxLease: 10s.
		res = r.ok(&Extend{ClientID: "c", Seq: 3, LeaseID: g.LeaseID, TTL: time.Minute})
		if res.TTL != 10*time.Second {
			t.Errorf("extend of a minute: TTL %v, want the key's 10s", res.TTL)
		}
		// A shorter one changes nothing.
		res = r.ok(&Extend{ClientID: "c", Seq: 4, LeaseID: g.LeaseID, TTL: time.Second})
		if res.TTL != 10*time.Second {
			t.Errorf("extend of 1s: TTL %v, want 10s", res.TTL)
		}
		r.now = start + 10*sec // past the first expiry
		if got := r.remaining("k", time.Second); got != 1 {
			t.Errorf("%d free at the first expiry's +8s, want 1", got)
		}
		r.now = start + 11*sec
		if got := r.remaining("k", time.Second); got != 2 {
			t.Errorf("%d free after the extended expiry, want 2", got)
		}
		if res := r.apply(&Extend{ClientID: "c", Seq: 5, LeaseID: g.LeaseID, TTL: time.Second}); res.Status != StatusLeaseGone {
			t.Errorf("extend of an expired lease: %v", res.Status)
		}
	})

	t.Run("refunds after the first expiry", func(t *testing.T) {
		r := newRig(t)
		r.setLimit("k", bucket)
		g := r.ok(&Acquire{ClientID: "c", Seq: 1, Items: []Item{{Key: "k", Count: 8}}, TTL: time.Second})
		r.advance(900 * time.Millisecond)
		r.ok(&Extend{ClientID: "c", Seq: 2, LeaseID: g.LeaseID, TTL: 3 * time.Second})
		r.advance(time.Second) // the lease's first expiry passed
		r.ok(&Release{ClientID: "c", Seq: 3, LeaseID: g.LeaseID, Unused: []int64{5}})
		if got := r.remaining("k", 0); got != 10 {
			t.Errorf("k holds %d after the refund, want 10 (2 + 19 refilled, capped)", got)
		}
	})

	t.Run("refused or capped", func(t *testing.T) {
		r := newRig(t)
		r.setLimit("k", bucket)
		g := r.ok(&Acquire{ClientID: "c", Seq: 1, Items: []Item{{Key: "k", Count: 1}}, TTL: time.Second})
		if res := r.apply(&Extend{ClientID: "d", Seq: 1, LeaseID: g.LeaseID, TTL: time.Second}); res.Status != StatusInvalidRequest {
			t.Errorf("extend of another client's lease: %v", res.Status)
		}
		if res := r.apply(&Extend{ClientID: "c", Seq: 2, LeaseID: g.LeaseID, TTL: -1}); res.Status != StatusInvalidTTL {
			t.Errorf("extend by a negative TTL: %v", res.Status)
		}
		if res := r.apply(&Extend{ClientID: "c", Seq: 3, LeaseID: 999, TTL: time.Second}); res.Status != StatusLeaseGone {
			t.Errorf("extend of an unknown lease: %v", res.Status)
		}
		// Redefined since the grant: no longer extended.
		r.setLimit("k", Limit{Algorithm: TokenBucket, Limit: 20, Period: time.Second, MaxLease: 3 * time.Second})
		if res := r.ok(&Extend{ClientID: "c", Seq: 4, LeaseID: g.LeaseID, TTL: 2 * time.Second}); res.TTL != time.Second {
			t.Errorf("extend of a lease on a redefined key: TTL %v, want the 1s it had", res.TTL)
		}
	})
}

// TestExtendedLeaseSurvivesSnapshot: an extended lease has two entries in the
// expiry heap; a snapshot writes it once, a restore counts it once, and it
// ends at its later expiry, before and after a restore.
func TestExtendedLeaseSurvivesSnapshot(t *testing.T) {
	r := newRig(t)
	r.setLimit("k", Limit{Algorithm: Concurrency, Limit: 1, MaxLease: 10 * time.Second})
	g := r.ok(&Acquire{ClientID: "c", Seq: 1, Items: []Item{{Key: "k", Count: 1}}, TTL: time.Second})
	r.ok(&Extend{ClientID: "c", Seq: 2, LeaseID: g.LeaseID, TTL: 5 * time.Second})
	r.ok(&Extend{ClientID: "c", Seq: 3, LeaseID: g.LeaseID, TTL: 8 * time.Second})
	if len(r.m.expiries) != 3 {
		t.Fatalf("%d heap entries, want 3", len(r.m.expiries))
	}
	snap := snapshotOf(t, r.m)
	restored := &rig{t: t, m: restoreFrom(t, snap), now: r.now}
	if v, _ := inspectKey(t, restored.m, "k"); v.Lessees != 1 || v.State != 1 {
		t.Errorf("restored key: %+v, want 1 lessee holding 1 unit", v)
	}
	for _, rg := range []*rig{r, restored} {
		rg.advance(7 * time.Second)
		if got := rg.remaining("k", time.Second); got != 0 {
			t.Errorf("%d free 7s in, want 0", got)
		}
		rg.advance(time.Second)
		if got := rg.remaining("k", time.Second); got != 1 {
			t.Errorf("%d free at the last expiry, want 1", got)
		}
	}
	// A snapshot whose live lease has no expiry entry at its expiry is
	// corrupt: the lease would never end.
	bad := withCRC(rewriteRecords(t, snap, recLease, func(body []byte) []byte {
		var out []byte
		if err := walk(body, func(num protowire.Number, typ protowire.Type, v uint64, b []byte) error {
			switch {
			case num == 3:
				out = appendVarint(out, num, v+1) // expires
			case typ == protowire.VarintType:
				out = appendVarint(out, num, v)
			default:
				out = protowire.AppendTag(out, num, typ)
				out = protowire.AppendBytes(out, b)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}))
	if err := New().Restore(bytes.NewReader(bad)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("restore of a lease without its expiry: %v, want ErrCorrupt", err)
	}
}

// rewriteRecords returns snap with the body of every record of the given
// kind replaced by fn's, and the end record's checksum left as it was (see
// withCRC).
func rewriteRecords(t *testing.T, snap []byte, kind byte, fn func([]byte) []byte) []byte {
	t.Helper()
	out := bytes.Clone(snap[:len(snapshotMagic)+1])
	for b := snap[len(out):]; len(b) > 0; {
		k := b[0]
		size, n := protowire.ConsumeVarint(b[1:])
		if n < 0 {
			t.Fatalf("record length: %v", protowire.ParseError(n))
		}
		body := b[1+n : 1+n+int(size)]
		b = b[1+n+int(size):]
		if k == kind {
			body = fn(body)
		}
		out = append(out, k)
		out = protowire.AppendBytes(out, body)
	}
	return out
}

// TestRefundDoesNotReopenABlock: a Release after a Restrict moved the key's
// TAT back by its refund, so a key blocked until T granted again before T
// (the bound test's block check caught it): the 429'd call's own settle,
// nothing used and all refunded, reopened the budget it had just blocked.
// A Restrict now leaves a floor that refunds do not go below; a refund that
// came before the Restrict would have left the same state.
func TestRefundDoesNotReopenABlock(t *testing.T) {
	sec := time.Second
	lim := Limit{Algorithm: TokenBucket, Limit: 10, Period: sec, Burst: 10, MaxLease: 5 * sec}
	for _, tt := range []struct {
		name string
		item RestrictItem
		// at, the time after the restrict when 1 token is first
		// grantable again, with or without the refund
		at time.Duration
	}{
		{"block", RestrictItem{Key: "k", Remaining: NoRemaining, BlockFor: 2 * sec}, 2*sec + 100*time.Millisecond},
		{"lower to 0", RestrictItem{Key: "k", Remaining: 0}, 100 * time.Millisecond},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t)
			r.setLimit("k", lim)
			g := r.ok(&Acquire{ClientID: "c", Seq: 1, Items: []Item{{Key: "k", Count: 8}}, TTL: 5 * sec})
			r.ok(&Restrict{ClientID: "c", Seq: 2, Items: []RestrictItem{tt.item}})
			start := r.now
			r.ok(&Release{ClientID: "c", Seq: 3, LeaseID: g.LeaseID, Unused: []int64{8}})
			r.now = start + int64(tt.at) - 1
			if res := r.apply(&Acquire{Items: []Item{{Key: "k", Count: 1}}}); res.Status != StatusDenied {
				t.Errorf("acquire 1ns before the restriction allows it, after a refund of 8: %v", res.Status)
			}
			r.now++
			r.ok(&Acquire{Items: []Item{{Key: "k", Count: 1}}})
		})
	}
	// The floor survives a snapshot.
	r := newRig(t)
	r.setLimit("k", lim)
	g := r.ok(&Acquire{ClientID: "c", Seq: 1, Items: []Item{{Key: "k", Count: 8}}, TTL: 5 * sec})
	r.ok(&Restrict{ClientID: "c", Seq: 2, Items: []RestrictItem{{Key: "k", Remaining: NoRemaining, BlockFor: 2 * sec}}})
	restored := &rig{t: t, m: restoreFrom(t, snapshotOf(t, r.m)), now: r.now}
	restored.ok(&Release{ClientID: "c", Seq: 3, LeaseID: g.LeaseID, Unused: []int64{8}})
	restored.advance(2 * sec)
	if res := restored.apply(&Acquire{Items: []Item{{Key: "k", Count: 1}}}); res.Status != StatusDenied {
		t.Errorf("restored: acquire at the end of the block after a refund: %v", res.Status)
	}
}
