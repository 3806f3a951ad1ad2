package fsm

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Golden snapshot files, one per snapshot format version, pin the format: every
// future build must restore every one of them. They are written once, when
// their version is introduced, and never regenerated: a change that breaks
// TestGoldenSnapshotV1, V2 or V3 breaks the restore of real clusters'
// snapshots. A new format is a new version with a new golden file (and a new
// test beside these); the old files stay as they are.
//
// To write a missing golden file of the current version (only then; an
// existing one is never overwritten):
//
//	LEASEHOLD_WRITE_GOLDEN=1 go test -run TestGoldenSnapshotV4 ./fsm/
//
// snapshot-v1.golden, snapshot-v2.golden and snapshot-v3.golden were written
// by the builds that introduced v1, v2 and v3, from the commands of
// buildGolden and buildGoldenV3; this build writes v4 and cannot write them
// again.
const (
	goldenV1 = "testdata/snapshot-v1.golden"
	goldenV2 = "testdata/snapshot-v2.golden"
	goldenV3 = "testdata/snapshot-v3.golden"
)

// goldenT0 is the log time of the golden state's first commands.
const goldenT0 = int64(1000 * time.Second)

// The limits of the golden state, as the commands that built it sent them.
var (
	goldenA    = Limit{Algorithm: TokenBucket, Limit: 10, Period: 10 * time.Second, Burst: 20, MaxLease: 30 * time.Second}
	goldenW    = Limit{Algorithm: SlidingWindow, Limit: 6, Period: 10 * time.Second, Slots: 5, MaxLease: 5 * time.Second}
	goldenS    = Limit{Algorithm: TokenBucket, Limit: 2, Period: time.Second, Burst: 10, Strict: true}
	goldenC    = Limit{Algorithm: Concurrency, Limit: 4, MaxLease: 30 * time.Second}
	goldenB    = Limit{Algorithm: TokenBucket, Limit: 1, Period: time.Second, Burst: 5}
	goldenGone = Limit{Algorithm: TokenBucket, Limit: 1, Period: time.Second}
)

// buildGolden applies the commands the golden snapshots were written from,
// v1 and v2 alike (v2 holds the same state, with the digests of the commands
// that got the sessions' results). It covers every record kind: limits of all
// three algorithms and a freed limit slot, pinned and unpinned keys, a
// sliding window with counts, live leases (one of two keys), a released lease
// whose expiry is still in the heap, and sessions remembering ok, denied and
// invalid results above a floor.
func buildGolden(t testing.TB) *Machine {
	r := &rig{t: t, m: New(), now: goldenT0}
	r.setLimit("a", goldenA)
	r.setLimit("w", goldenW)
	r.setLimit("s", goldenS)
	// Lease 1: 2 of c's 4 units until T0+20s.
	r.ok(&Acquire{ClientID: "c1", Seq: 1, Items: []Item{{Key: "c", Count: 2, Limit: &goldenC}}, TTL: 20 * time.Second})
	// Lease 2: 8 of a (count 5, want 8, a fair share of 15 left) and 2 of
	// w, until T0+4s.
	r.ok(&Acquire{ClientID: "c1", Seq: 2, Items: []Item{{Key: "a", Count: 5, Want: 8}, {Key: "w", Count: 2}}, TTL: 4 * time.Second})
	// Lease 3: 2 of a until T0+10s.
	r.ok(&Acquire{ClientID: "c2", Seq: 1, Items: []Item{{Key: "a", Count: 2}}, TTL: 10 * time.Second})
	// b: 3 of 5 taken centrally, refilling at 1/s.
	r.ok(&Acquire{Items: []Item{{Key: "b", Count: 3, Limit: &goldenB}}})

	r.now = goldenT0 + int64(time.Second)
	r.ok(&Release{ClientID: "c2", Seq: 2, LeaseID: 3, Unused: []int64{1}})
	r.ok(&Acquire{ClientID: "c2", Seq: 3, Items: []Item{{Key: "w", Count: 1}}})
	r.ok(&Acquire{ClientID: "c3", Seq: 5, AckedBelow: 5, Items: []Item{{Key: "a", Count: 1}}})
	if res := r.apply(&Acquire{ClientID: "c3", Seq: 6, AckedBelow: 5, Items: []Item{{Key: "a", Count: 20}}}); res.Status != StatusDenied {
		t.Fatalf("c3 seq 6: %v, want denied", res.Status)
	}
	if res := r.apply(&Acquire{ClientID: "c3", Seq: 7, AckedBelow: 5, Items: []Item{{Key: "a", Count: 0}}}); res.Status != StatusInvalidCount {
		t.Fatalf("c3 seq 7: %v, want invalid-count", res.Status)
	}
	r.setLimit("gone", goldenGone)
	r.ok(&DeleteLimit{Key: "gone"})
	return r.m
}

// asVersion returns snap with its format version byte set to v and its
// checksum made right again.
func asVersion(snap []byte, v byte) []byte {
	out := bytes.Clone(snap)
	out[len(snapshotMagic)] = v
	return withCRC(out)
}

// TestGoldenSnapshotV1: a v1 snapshot restores to the state it was written
// from, and its remembered results, which have no digest, answer every retry
// of their seq as before v2, whatever the retry's body.
func TestGoldenSnapshotV1(t *testing.T) {
	golden, err := os.ReadFile(goldenV1)
	if err != nil {
		t.Fatalf("read the golden snapshot: %v", err)
	}
	t.Run("re-snapshot is the current version without digests", func(t *testing.T) {
		// Written again, the state is the same records: nothing invents a
		// digest for a result that had none.
		if again := snapshotOf(t, restoreFrom(t, golden)); !bytes.Equal(again, asVersion(golden, snapshotVersion)) {
			t.Fatalf("snapshot of the restored v1 state is not the v1 file as v%d", snapshotVersion)
		}
	})
	checkGolden(t, golden)
	t.Run("a reused seq gets the remembered result", func(t *testing.T) {
		r := &rig{t: t, m: restoreFrom(t, golden), now: goldenT0 + int64(time.Second)}
		// c3's seq 6 was a denied acquire of 20 of a; asked as 1 of b.
		res := r.apply(&Acquire{ClientID: "c3", Seq: 6, AckedBelow: 5, Items: []Item{{Key: "b", Count: 1}}})
		if res.Status != StatusDenied || res.RetryAfter != 9*time.Second {
			t.Errorf("c3 seq 6 with another body: %+v, want the remembered denial (no digest to compare)", res)
		}
	})
}

// TestGoldenSnapshotV2: a v2 snapshot restores to the state it was written
// from, digests included: a retry with the same body gets the remembered
// result, one with another body gets StatusSeqReused.
func TestGoldenSnapshotV2(t *testing.T) {
	golden, err := os.ReadFile(goldenV2)
	if err != nil {
		t.Fatalf("read the golden snapshot: %v", err)
	}
	// Its state has no debt and no result of a Charge or Restrict: written
	// again, it is the same records under the current version.
	t.Run("re-snapshot is the v2 file as the current version", func(t *testing.T) {
		if again := snapshotOf(t, restoreFrom(t, golden)); !bytes.Equal(again, asVersion(golden, snapshotVersion)) {
			t.Fatalf("snapshot of the restored golden state is not the v2 file as v%d", snapshotVersion)
		}
	})
	t.Run("the golden commands write it", func(t *testing.T) {
		if got := snapshotOf(t, buildGolden(t)); !bytes.Equal(got, asVersion(golden, snapshotVersion)) {
			t.Fatal("the golden commands snapshot differently from the golden file")
		}
	})
	t.Run("v1 is v2 without digests", func(t *testing.T) {
		v1, err := os.ReadFile(goldenV1)
		if err != nil {
			t.Fatal(err)
		}
		m := restoreFrom(t, v1)
		if bytes.Equal(snapshotOf(t, m), asVersion(golden, snapshotVersion)) {
			t.Fatal("v1 restored writes the v2 golden file: the digests are missing from it")
		}
		for _, s := range restoreFrom(t, golden).sessionOrder {
			for _, r := range s.results {
				if r.digest == 0 {
					t.Errorf("session %q seq %d: no digest in v2", s.client, r.seq)
				}
			}
		}
	})
	checkGolden(t, golden)
	t.Run("a reused seq is refused", func(t *testing.T) {
		r := &rig{t: t, m: restoreFrom(t, golden), now: goldenT0 + int64(time.Second)}
		results := func() map[string][]seqResult {
			out := make(map[string][]seqResult)
			for _, s := range r.m.sessionOrder {
				out[s.client] = slices.Clone(s.results)
			}
			return out
		}
		before := results()
		for _, c := range []Command{
			&Acquire{ClientID: "c3", Seq: 6, AckedBelow: 5, Items: []Item{{Key: "b", Count: 1}}},          // other items
			&Acquire{ClientID: "c3", Seq: 6, AckedBelow: 5, Items: []Item{{Key: "a", Count: 20}}, TTL: 1}, // other TTL
			&Release{ClientID: "c3", Seq: 6, LeaseID: 1},                                                  // other type
			&Release{ClientID: "c2", Seq: 2, LeaseID: 3, Unused: []int64{0}},                              // other unused
		} {
			if res := r.apply(c); res.Status != StatusSeqReused || res.Message == "" || res.Time != r.now {
				t.Errorf("%+v: %+v, want seq-reused with a message, at the log time", c, res)
			}
		}
		// Nothing applied: no token taken or lease released, no result
		// replaced.
		if diff := cmp.Diff(before, results(), cmp.AllowUnexported(seqResult{})); diff != "" {
			t.Errorf("a reused seq changed the remembered results (-before +after):\n%s", diff)
		}
		if got := r.remaining("b", 0); got != 3 {
			t.Errorf("b holds %d, want 3", got)
		}
		if r.m.leases.get(1) == nil || r.m.leases.len() != 2 {
			t.Errorf("%d live leases, want leases 1 and 2", r.m.leases.len())
		}
		// The same bodies under their own seqs are fine: the check is not
		// blind to what a retry is.
		if res := r.apply(&Acquire{ClientID: "c3", Seq: 6, Items: []Item{{Key: "a", Count: 20}}}); res.Status != StatusDenied {
			t.Errorf("c3 seq 6 retried with its body (acked_below changed): %v, want the remembered denial", res.Status)
		}
	})
}

// checkGolden runs the checks every golden file's state must pass: it is the
// state buildGolden makes.
func checkGolden(t *testing.T, golden []byte) {
	t1 := goldenT0 + int64(time.Second) // the log time of the snapshot

	// restored returns a rig over a fresh restore of the golden file, at the
	// snapshot's log time.
	restored := func(t *testing.T) *rig {
		t.Helper()
		return &rig{t: t, m: restoreFrom(t, golden), now: t1}
	}

	t.Run("state", func(t *testing.T) {
		m := restored(t).m
		if m.Now() != t1 {
			t.Errorf("Now %d, want %d", m.Now(), t1)
		}
		// a: 8 + 2 taken at T0 (TAT T0+10s at 1 token/s), 1 refunded at
		// T0+1s (T0+9s), 1 taken (T0+10s).
		// b: 3 taken at T0 (TAT T0+3s). c: lease 1 holds 2 units.
		want := map[string]keyView{
			"a": {Pinned: true, Limit: goldenA.Normalize(), State: goldenT0 + int64(10*time.Second), Lessees: 1},
			"w": {Pinned: true, Limit: goldenW.Normalize(), Lessees: 1},
			"s": {Pinned: true, Limit: goldenS.Normalize()},
			"c": {Limit: goldenC.Normalize(), State: 2, Lessees: 1},
			"b": {Limit: goldenB.Normalize(), State: goldenT0 + int64(3*time.Second)},
		}
		for key, w := range want {
			got, ok := inspectKey(t, m, key)
			if !ok {
				t.Errorf("key %q missing", key)
				continue
			}
			if (got.Window != nil) != (key == "w") {
				t.Errorf("key %q: window state %v", key, got.Window)
			}
			got.Window = nil
			if diff := cmp.Diff(w, got); diff != "" {
				t.Errorf("key %q (-want +got):\n%s", key, diff)
			}
		}
		if _, ok := inspectKey(t, m, "gone"); ok {
			t.Error(`deleted key "gone" restored`)
		}
		if len(m.entries) != len(want) {
			t.Errorf("%d keys, want %d", len(m.entries), len(want))
		}
		// Six definitions were made, in order a w s c b gone; gone's
		// (id 6) was freed.
		if n := limitSlotsInUse(m); n != 5 || len(m.limits.slots) != 7 {
			t.Errorf("%d limits in use of %d slots, want 5 of 7 (id 0 unused)", n, len(m.limits.slots))
		}
		if diff := cmp.Diff([]uint32{6}, m.limits.free); diff != "" {
			t.Errorf("free limit ids (-want +got):\n%s", diff)
		}
		// Leases 1 and 2 live; lease 3's expiry still in the heap.
		if m.leases.get(3) != nil || m.leases.len() != 2 || m.leases.get(1) == nil || m.leases.get(2) == nil {
			t.Errorf("%d live leases, want 1 and 2", m.leases.len())
		}
		if len(m.expiries) != 3 {
			t.Errorf("%d expiries in the heap, want 3", len(m.expiries))
		}
		if l := m.leases.get(2); l != nil {
			if l.client != "c1" || l.expires != goldenT0+int64(4*time.Second) || len(l.items) != 2 ||
				l.items[0].key != "a" || l.items[0].granted != 8 || l.items[1].key != "w" || l.items[1].granted != 2 {
				t.Errorf("lease 2: %+v", *l)
			}
		}
		if len(m.sessions) != 3 || m.sessions["c3"] == nil || m.sessions["c3"].floor != 5 {
			t.Errorf("sessions: %v, want c1, c2, c3 (floor 5)", m.sessions)
		}
	})

	t.Run("retries return the remembered results", func(t *testing.T) {
		r := restored(t)
		r.now += int64(100 * time.Millisecond) // later, as a retry is
		tests := []struct {
			cmd  Command
			want Result
		}{
			// Lease 2 as first granted: a count 5, want 8, of 20 with 15
			// left after the count: 8, leaving 12; w 2 of 6.
			{&Acquire{ClientID: "c1", Seq: 2, Items: []Item{{Key: "a", Count: 5, Want: 8}, {Key: "w", Count: 2}}, TTL: 4 * time.Second},
				Result{Status: StatusOK, Time: goldenT0, LeaseID: 2, TTL: 4 * time.Second,
					Items: []ItemResult{{Granted: 8, Remaining: 12}, {Granted: 2, Remaining: 4}}}},
			// At T0+1s, after c3's take of 1, a's TAT is T0+10s: 9s of
			// debt at 1 token/s, 11 left. 20 needs the whole burst: 9s
			// more of refill.
			{&Acquire{ClientID: "c3", Seq: 6, AckedBelow: 5, Items: []Item{{Key: "a", Count: 20}}},
				Result{Status: StatusDenied, Time: t1, RetryAfter: 9 * time.Second, Items: []ItemResult{{Granted: 0, Remaining: 11}}}},
			{&Acquire{ClientID: "c3", Seq: 7, AckedBelow: 5, Items: []Item{{Key: "a", Count: 0}}},
				Result{Status: StatusInvalidCount, Time: t1, Message: `key "a": count 0 must be positive`}},
			{&Release{ClientID: "c2", Seq: 2, LeaseID: 3, Unused: []int64{1}},
				Result{Status: StatusOK, Time: t1}},
		}
		for _, tt := range tests {
			if diff := cmp.Diff(tt.want, r.apply(tt.cmd)); diff != "" {
				t.Errorf("retry of %+v (-want +got):\n%s", tt.cmd, diff)
			}
		}
		// Below c3's floor: stale, not applied.
		if res := r.apply(&Acquire{ClientID: "c3", Seq: 4, Items: []Item{{Key: "a", Count: 1}}}); res.Status != StatusStale {
			t.Errorf("c3 seq 4: %v, want stale", res.Status)
		}
	})

	t.Run("leases", func(t *testing.T) {
		r := restored(t)
		// a holds 20 - 9s·1/s = 11. Lease 2 returns 3 of its 8: 14.
		// w counts lease 2's 2 and c2's 1: 3 left; 1 of lease 2's comes
		// back: 4.
		if got := r.remaining("a", 0); got != 11 {
			t.Errorf("a holds %d, want 11", got)
		}
		if got := r.remaining("w", 0); got != 3 {
			t.Errorf("w holds %d, want 3", got)
		}
		r.ok(&Release{ClientID: "c1", Seq: 3, LeaseID: 2, Unused: []int64{3, 1}})
		if got := r.remaining("a", 0); got != 14 {
			t.Errorf("a holds %d after lease 2's release, want 14", got)
		}
		if got := r.remaining("w", 0); got != 4 {
			t.Errorf("w holds %d after lease 2's release, want 4", got)
		}
		if res := r.apply(&Release{ClientID: "c2", Seq: 4, LeaseID: 3}); res.Status != StatusLeaseGone {
			t.Errorf("release of the released lease 3: %v, want lease-gone", res.Status)
		}
		// The next lease is number 4.
		if res := r.ok(&Acquire{ClientID: "c4", Seq: 1, Items: []Item{{Key: "a", Count: 1}}, TTL: time.Second}); res.LeaseID != 4 {
			t.Errorf("next lease id %d, want 4", res.LeaseID)
		}
		// c: 2 of 4 units held by lease 1 until T0+20s.
		if got := r.remaining("c", time.Second); got != 2 {
			t.Errorf("c has %d free, want 2", got)
		}
		r.now = goldenT0 + int64(20*time.Second)
		if got := r.remaining("c", time.Second); got != 4 {
			t.Errorf("c has %d free after lease 1 expired, want 4", got)
		}
	})

	t.Run("limits", func(t *testing.T) {
		r := restored(t)
		// Strict s: r = 2/s, Λ = 2s, ⌈rΛ⌉ = 4 held back of 10.
		if got := r.remaining("s", 0); got != 6 {
			t.Errorf("s offers %d, want 6", got)
		}
		// b: 3 of 5 taken at T0, 1 back by T0+1s: 3.
		if got := r.remaining("b", 0); got != 3 {
			t.Errorf("b holds %d, want 3", got)
		}
		// A new definition takes the freed id 6.
		r.setLimit("new", Limit{Algorithm: TokenBucket, Limit: 7, Period: time.Second})
		id := uint32(0)
		if i := r.m.keys.findString(r.m.entries, "new"); i >= 0 {
			id = r.m.entries[i].limit()
		}
		if id != 6 {
			t.Errorf("new limit got id %d, want the freed 6", id)
		}
	})
}

// The limits the v3 golden state adds: a bucket that may owe 5 tokens, set by
// SetLimit, and one that may owe 2, sent inline with a Charge.
var (
	goldenD = Limit{Algorithm: TokenBucket, Limit: 10, Period: time.Second, Burst: 10, MaxDebt: 5}
	goldenE = Limit{Algorithm: TokenBucket, Limit: 1, Period: time.Second, Burst: 4, MaxDebt: 2}
)

// buildGoldenV3 applies the commands the v3 golden snapshot was written from:
// buildGolden's, then, at its last log time, a limit with a MaxDebt, charges
// into debt (one in part forgiven at the cap, one creating its key from an
// inline limit), a Restrict that lowers one key and blocks another, one
// refused (a concurrency key), and Extends: one that moves a lease's expiry
// (leaving two entries in the expiry heap), one of a released lease and one
// that changes nothing.
func buildGoldenV3(t testing.TB) *Machine {
	r := &rig{t: t, m: buildGolden(t), now: goldenT0 + int64(time.Second)}
	r.setLimit("d", goldenD)
	r.ok(&Charge{ClientID: "c4", Seq: 1, Items: []ChargeItem{{Key: "d", Tokens: 12}}})
	r.ok(&Charge{ClientID: "c4", Seq: 2, Items: []ChargeItem{{Key: "d", Tokens: 9}, {Key: "e", Tokens: 5, Limit: &goldenE}}})
	r.ok(&Restrict{ClientID: "c4", Seq: 3, Items: []RestrictItem{
		{Key: "a", Remaining: 4}, {Key: "b", Remaining: NoRemaining, BlockFor: 2 * time.Second}}})
	if res := r.apply(&Restrict{ClientID: "c4", Seq: 4, Items: []RestrictItem{
		{Key: "c", Remaining: NoRemaining, BlockFor: time.Second}}}); res.Status != StatusInvalidRequest {
		t.Fatalf("restrict of a concurrency key: %v, want invalid-request", res.Status)
	}
	r.ok(&Extend{ClientID: "c1", Seq: 3, LeaseID: 1, TTL: 30 * time.Second})
	if res := r.apply(&Extend{ClientID: "c2", Seq: 4, LeaseID: 3, TTL: 5 * time.Second}); res.Status != StatusLeaseGone {
		t.Fatalf("extend of released lease 3: %v, want lease-gone", res.Status)
	}
	r.ok(&Extend{ClientID: "c1", Seq: 4, LeaseID: 2, TTL: time.Second})
	return r.m
}

// TestGoldenSnapshotV3: a v3 snapshot restores to the state it was written
// from: limits with a MaxDebt, keys in debt and blocked with their refund
// floors, an extended lease with its two expiry entries, and the results of
// Charge, Restrict and Extend, whose retries get them again and charge
// nothing twice.
func TestGoldenSnapshotV3(t *testing.T) {
	golden, err := os.ReadFile(goldenV3)
	if err != nil {
		t.Fatalf("read the golden snapshot: %v", err)
	}
	// Its state has no window buckets, pieced lease or piece: written
	// again, it is the same records under the current version.
	t.Run("re-snapshot is the v3 file as the current version", func(t *testing.T) {
		if again := snapshotOf(t, restoreFrom(t, golden)); !bytes.Equal(again, asVersion(golden, snapshotVersion)) {
			t.Fatalf("snapshot of the restored golden state is not the v3 file as v%d", snapshotVersion)
		}
	})
	t.Run("the golden commands write it", func(t *testing.T) {
		if got := snapshotOf(t, buildGoldenV3(t)); !bytes.Equal(got, asVersion(golden, snapshotVersion)) {
			t.Fatal("the golden commands snapshot differently from the golden file")
		}
	})

	t1 := goldenT0 + int64(time.Second)
	restored := func(t *testing.T) *rig {
		t.Helper()
		return &rig{t: t, m: restoreFrom(t, golden), now: t1}
	}
	sec := int64(time.Second)

	t.Run("state", func(t *testing.T) {
		m := restored(t).m
		// d: full (10), charged 12 then 3 of 9: owes 5, 1.5s of refill.
		// e: full (4), charged 5: owes 1, 5s of refill. a: lowered from
		// 11 to 4, 16s from full. b: empty 2s from now, 7s from full.
		want := map[string]keyView{
			"d": {Pinned: true, Limit: goldenD.Normalize(), State: t1 + 3*sec/2},
			"e": {Limit: goldenE.Normalize(), State: t1 + 5*sec},
			"a": {Pinned: true, Limit: goldenA.Normalize(), State: t1 + 16*sec, Lessees: 1},
			"b": {Limit: goldenB.Normalize(), State: t1 + 7*sec},
			"c": {Limit: goldenC.Normalize(), State: 2, Lessees: 1},
		}
		for key, w := range want {
			got, ok := inspectKey(t, m, key)
			if !ok {
				t.Errorf("key %q missing", key)
				continue
			}
			if diff := cmp.Diff(w, got); diff != "" {
				t.Errorf("key %q (-want +got):\n%s", key, diff)
			}
		}
		// The freed id 6 went to d's limit, e's is new.
		if n := limitSlotsInUse(m); n != 7 || len(m.limits.slots) != 8 {
			t.Errorf("%d limits in use of %d slots, want 7 of 8 (id 0 unused)", n, len(m.limits.slots))
		}
		// Lease 1 extended to t1+30s; its first expiry stays in the heap.
		if l := m.leases.get(1); l == nil || l.expires != t1+30*sec {
			t.Errorf("lease 1: %+v, want live until %d", l, t1+30*sec)
		}
		if len(m.expiries) != 4 || m.leases.len() != 2 {
			t.Errorf("%d expiries in the heap and %d live leases, want 4 and 2", len(m.expiries), m.leases.len())
		}
	})

	t.Run("retries return the remembered results", func(t *testing.T) {
		r := restored(t)
		r.now += int64(100 * time.Millisecond)
		tests := []struct {
			cmd  Command
			want Result
		}{
			{&Charge{ClientID: "c4", Seq: 1, Items: []ChargeItem{{Key: "d", Tokens: 12}}},
				Result{Status: StatusOK, Time: t1, RetryAfter: 300 * time.Millisecond,
					Items: []ItemResult{{Granted: 12, Remaining: -2}}}},
			{&Charge{ClientID: "c4", Seq: 2, Items: []ChargeItem{{Key: "d", Tokens: 9}, {Key: "e", Tokens: 5, Limit: &goldenE}}},
				Result{Status: StatusOK, Time: t1, RetryAfter: 2 * time.Second,
					Items: []ItemResult{{Granted: 3, Remaining: -5}, {Granted: 5, Remaining: -1}}}},
			{&Restrict{ClientID: "c4", Seq: 3, Items: []RestrictItem{
				{Key: "a", Remaining: 4}, {Key: "b", Remaining: NoRemaining, BlockFor: 2 * time.Second}}},
				Result{Status: StatusOK, Time: t1, RetryAfter: 3 * time.Second,
					Items: []ItemResult{{Granted: 7, Remaining: 4}, {Granted: 5, Remaining: -2}}}},
			{&Extend{ClientID: "c1", Seq: 3, LeaseID: 1, TTL: 30 * time.Second},
				Result{Status: StatusOK, Time: t1, LeaseID: 1, TTL: 30 * time.Second}},
			{&Extend{ClientID: "c2", Seq: 4, LeaseID: 3, TTL: 5 * time.Second},
				Result{Status: StatusLeaseGone, Time: t1}},
			{&Extend{ClientID: "c1", Seq: 4, LeaseID: 2, TTL: time.Second},
				Result{Status: StatusOK, Time: t1, LeaseID: 2, TTL: 3 * time.Second}},
		}
		for _, tt := range tests {
			if diff := cmp.Diff(tt.want, r.apply(tt.cmd)); diff != "" {
				t.Errorf("retry of %+v (-want +got):\n%s", tt.cmd, diff)
			}
		}
		if res := r.apply(&Restrict{ClientID: "c4", Seq: 4, Items: []RestrictItem{
			{Key: "c", Remaining: NoRemaining, BlockFor: time.Second}}}); res.Status != StatusInvalidRequest || res.Message == "" {
			t.Errorf("retry of the refused restrict: %+v", res)
		}
		// The retries charged nothing: d still owes 5.
		if got, _ := inspectKey(t, r.m, "d"); got.State != t1+3*sec/2 {
			t.Errorf("d's TAT %d after the retries, want %d", got.State, t1+3*sec/2)
		}
		// Another body under a remembered seq is refused.
		for _, c := range []Command{
			&Charge{ClientID: "c4", Seq: 1, Items: []ChargeItem{{Key: "d", Tokens: 13}}},
			&Charge{ClientID: "c4", Seq: 2, Items: []ChargeItem{{Key: "d", Tokens: 9}, {Key: "e", Tokens: 5,
				Limit: &Limit{Algorithm: TokenBucket, Limit: 1, Period: time.Second, Burst: 4, MaxDebt: 3}}}},
			&Restrict{ClientID: "c4", Seq: 3, Items: []RestrictItem{{Key: "a", Remaining: 4}}},
			&Extend{ClientID: "c1", Seq: 3, LeaseID: 1, TTL: 29 * time.Second},
		} {
			if res := r.apply(c); res.Status != StatusSeqReused {
				t.Errorf("%+v: %v, want seq-reused", c, res.Status)
			}
		}
	})

	t.Run("the extended lease", func(t *testing.T) {
		r := restored(t)
		// c: lease 1 holds 2 of 4 units until t1+30s, past its first
		// expiry at T0+20s.
		r.now = goldenT0 + 25*sec
		if got := r.remaining("c", time.Second); got != 2 {
			t.Errorf("c has %d free at T0+25s, want 2", got)
		}
		r.now = t1 + 30*sec
		if got := r.remaining("c", time.Second); got != 4 {
			t.Errorf("c has %d free after lease 1's extended expiry, want 4", got)
		}
		if len(r.m.expiries) != 0 {
			t.Errorf("%d expiries left, want none", len(r.m.expiries))
		}
	})

	t.Run("a refund does not undo a restrict", func(t *testing.T) {
		r := restored(t)
		// Lease 2 holds 8 of a, lowered to 4 since: its refund leaves 4.
		r.ok(&Release{ClientID: "c1", Seq: 5, LeaseID: 2, Unused: []int64{8, 2}})
		if got := r.remaining("a", 0); got != 4 {
			t.Errorf("a offers %d after a refund of 8, want the 4 it was lowered to", got)
		}
		if f := r.m.floors["a"]; f != t1+16*sec {
			t.Errorf("a's floor %d, want %d", f, t1+16*sec)
		}
	})

	t.Run("debt is repaid before a grant", func(t *testing.T) {
		r := restored(t)
		// d owes 5 at 10/s: empty at t1+0.5s, a token at t1+0.6s.
		r.now = t1 + 599*int64(time.Millisecond)
		if res := r.apply(&Acquire{Items: []Item{{Key: "d", Count: 1}}}); res.Status != StatusDenied || res.RetryAfter != time.Millisecond {
			t.Errorf("acquire at t1+599ms: %+v, want denied for 1ms", res)
		}
		r.now = t1 + 600*int64(time.Millisecond)
		r.ok(&Acquire{Items: []Item{{Key: "d", Count: 1}}})
		// b is blocked until t1+2s: nothing before, and then it refills
		// from empty: a token at t1+3s.
		r.now = t1 + 2*sec
		if res := r.apply(&Acquire{Items: []Item{{Key: "b", Count: 1}}}); res.Status != StatusDenied || res.RetryAfter != time.Second {
			t.Errorf("acquire of b at the end of its block: %+v, want denied for 1s", res)
		}
	})
}

// goldenV4 pins format v4.
const goldenV4 = "testdata/snapshot-v4.golden"

// goldenP is the window of the v4 golden state: 12 in any 10s, asked with 2
// slots and counted in 4 buckets of 2.5s.
var goldenP = Limit{Algorithm: SlidingWindow, Limit: 12, Period: 10 * time.Second, Slots: 2, Buckets: 4, MaxLease: 10 * time.Second}

// buildGoldenV4 applies the commands the v4 golden snapshot was written
// from: buildGoldenV3's, then, at its last log time (1001s, in bucket 400 of
// goldenP), a limit with Buckets set by SetLimit, a paced lease on it (a
// pieced lease item and a result with its Piece), a central take, and a
// paced lease of a second client that the buckets' cap starts later.
func buildGoldenV4(t testing.TB) *Machine {
	r := &rig{t: t, m: buildGoldenV3(t), now: goldenT0 + int64(time.Second)}
	r.setLimit("p", goldenP)
	// 1001s is bucket 400 [1000s, 1002.5s); a 5s life ends in bucket 402,
	// so the lease is buckets 400 to 402, until 1007.5s. The cap is
	// ⌈12/5⌉ = 3 a bucket; c5 alone gets it: 3 in each (it asked 10 over
	// 5s, 5 a bucket: short, paced until its last piece, 1005s).
	res := r.ok(&Acquire{ClientID: "c5", Seq: 1, Items: []Item{{Key: "p", Count: 1, Want: 10}}, TTL: 5 * time.Second, Paced: true})
	if res.Items[0].Granted != 9 || res.Pieces != 3 || res.Piece != 2500*time.Millisecond || res.TTL != 6500*time.Millisecond {
		t.Fatalf("c5's paced lease: %+v, want 3 in each of 3 buckets of 2.5s, for 6.5s", res)
	}
	r.ok(&Acquire{ClientID: "c6", Seq: 1, Items: []Item{{Key: "p", Count: 1}}})
	// c6 now: bucket 400 holds 4 (past the cap), 401 and 402 hold 3; a
	// life of 7.5s ends in bucket 403 (until 1010s). Two lessees: ⌊3/2⌋
	// = 1 a bucket, in 403 only.
	res = r.ok(&Acquire{ClientID: "c6", Seq: 2, Items: []Item{{Key: "p", Count: 1, Want: 9}}, TTL: 7500 * time.Millisecond, Paced: true})
	if res.Items[0].Granted != 1 || res.Pieces != 1 || res.TTL != 9*time.Second {
		t.Fatalf("c6's paced lease: %+v, want 1 in bucket 403, until 1010s", res)
	}
	return r.m
}

// TestGoldenSnapshotV4: a v4 snapshot restores to the state it was written
// from: a window counted in more buckets than its slots, pieced leases that
// give back their last pieces, and a remembered result with its Piece.
func TestGoldenSnapshotV4(t *testing.T) {
	if os.Getenv("LEASEHOLD_WRITE_GOLDEN") != "" {
		if _, err := os.Stat(goldenV4); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%s exists (or cannot be checked: %v); golden files are never regenerated", goldenV4, err)
		}
		if err := os.MkdirAll(filepath.Dir(goldenV4), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(goldenV4, snapshotOf(t, buildGoldenV4(t)), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", goldenV4)
	}
	golden, err := os.ReadFile(goldenV4)
	if err != nil {
		t.Fatalf("read the golden snapshot: %v", err)
	}
	t.Run("re-snapshot is identical", func(t *testing.T) {
		if again := snapshotOf(t, restoreFrom(t, golden)); !bytes.Equal(again, golden) {
			t.Fatal("snapshot of the restored golden state differs from the golden file")
		}
	})
	t.Run("the golden commands write it", func(t *testing.T) {
		if got := snapshotOf(t, buildGoldenV4(t)); !bytes.Equal(got, golden) {
			t.Fatal("the golden commands snapshot differently from the golden file")
		}
	})
	t1 := goldenT0 + int64(time.Second)
	restored := func(t *testing.T) *rig {
		t.Helper()
		return &rig{t: t, m: restoreFrom(t, golden), now: t1}
	}
	t.Run("state", func(t *testing.T) {
		m := restored(t).m
		got, ok := inspectKey(t, m, "p")
		if !ok || got.Limit != goldenP.Normalize() || got.Lessees != 2 {
			t.Errorf("key p: %+v, want limit %+v and 2 lessees", got, goldenP.Normalize())
		}
		var pieced int
		for _, l := range m.leases.slots {
			if l != nil && l.items[0].key == "p" {
				if !l.items[0].span.Pieced {
					t.Errorf("lease %d of p is not pieced", l.id)
				}
				pieced++
			}
		}
		if pieced != 2 {
			t.Errorf("%d pieced leases of p, want 2", pieced)
		}
	})
	t.Run("retries return the remembered results", func(t *testing.T) {
		r := restored(t)
		r.now += int64(100 * time.Millisecond)
		res := r.apply(&Acquire{ClientID: "c5", Seq: 1, Items: []Item{{Key: "p", Count: 1, Want: 10}}, TTL: 5 * time.Second, Paced: true})
		want := Result{Status: StatusOK, Time: t1, LeaseID: 4, TTL: 6500 * time.Millisecond, RetryAfter: 4 * time.Second,
			Pieces: 3, Piece: 2500 * time.Millisecond, Items: []ItemResult{{Granted: 9, Remaining: 3}}}
		if diff := cmp.Diff(want, res); diff != "" {
			t.Errorf("retry of c5's paced lease (-want +got):\n%s", diff)
		}
		// Not paced, the same acquire is another body.
		if res := r.apply(&Acquire{ClientID: "c5", Seq: 1, Items: []Item{{Key: "p", Count: 1, Want: 10}}, TTL: 5 * time.Second}); res.Status != StatusSeqReused {
			t.Errorf("c5's seq 1 without Paced: %v, want seq-reused", res.Status)
		}
	})
	t.Run("a release gives back the last pieces", func(t *testing.T) {
		r := restored(t)
		// c5 spent 2 of bucket 400's 3 and none of 401's or 402's: 7
		// unused come back, 3 from each of 402 and 401, 1 from 400.
		r.ok(&Release{ClientID: "c5", Seq: 2, LeaseID: 4, Unused: []int64{7}})
		ws := r.m.windows["p"]
		c := r.m.limits.get(r.m.entries[r.m.keys.findString(r.m.entries, "p")].limit())
		if got := c.window.Booked(&ws.WindowState, r.now, 400); got != 3 { // 2 of c5's, 1 of c6's central
			t.Errorf("bucket 400 holds %d after the release, want 3", got)
		}
		for _, k := range []int64{401, 402} {
			if got := c.window.Booked(&ws.WindowState, r.now, k); got != 0 {
				t.Errorf("bucket %d holds %d after the release, want 0", k, got)
			}
		}
	})
}
