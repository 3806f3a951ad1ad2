package fsm

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

var bulkLimit = Limit{Algorithm: TokenBucket, Limit: 10, Period: time.Hour}

// inline creates key unpinned, as a client's acquire does: drained, so the
// idle sweep never forgets it.
func (r *rig) inline(key string) {
	r.t.Helper()
	r.ok(&Acquire{Items: []Item{{Key: key, Count: 10, Limit: &bulkLimit}}})
}

// keysOf returns the machine's keys, in byte order.
func keysOf(m *Machine) []string {
	var keys []string
	listed, _ := m.List("", "", 1<<30, false)
	for _, k := range listed {
		keys = append(keys, k.Key)
	}
	return keys
}

// deleteAll applies DeleteLimits from start after "" until it says no
// more, checking each entry's bound, and returns the keys deleted and the
// entries it took.
func (r *rig) deleteAll(prefix string, unpinned bool) (deleted, entries int) {
	r.t.Helper()
	after := ""
	for {
		res := r.ok(&DeleteLimits{Prefix: prefix, StartAfter: after, UnpinnedOnly: unpinned})
		d := res.Deleted
		if d == nil || d.Keys > MaxDeleteExamined {
			r.t.Fatalf("DeleteLimits after %q: %+v", after, d)
		}
		deleted += d.Keys
		entries++
		if !d.More {
			return deleted, entries
		}
		if d.LastKey <= after {
			r.t.Fatalf("DeleteLimits after %q: last key %q does not move on", after, d.LastKey)
		}
		after = d.LastKey
	}
}

// The prefix bounds what is deleted: a key that merely shares the prefix's
// letters without it ("ab/1" for "a/") or sorts among its keys stays.
func TestDeleteLimitsPrefixBound(t *testing.T) {
	r := newRig(t)
	for _, k := range []string{"a", "a/", "a/1", "a/2/x", "a0", "ab/1", "b/1", "`"} {
		r.inline(k)
	}
	res := r.ok(&DeleteLimits{Prefix: "a/", UnpinnedOnly: true})
	if want := (Deleted{Keys: 3, LastKey: "a/2/x"}); *res.Deleted != want {
		t.Errorf("Deleted %+v, want %+v", *res.Deleted, want)
	}
	if got, want := keysOf(r.m), []string{"`", "a", "a0", "ab/1", "b/1"}; !slices.Equal(got, want) {
		t.Errorf("keys left %q, want %q", got, want)
	}
	if n := r.m.Stats().Keys; n != 5 {
		t.Errorf("Stats().Keys %d, want 5", n)
	}
	if res := r.ok(&DeleteLimits{Prefix: "zz"}); *res.Deleted != (Deleted{}) {
		t.Errorf("prefix of no key: %+v, want nothing deleted", *res.Deleted)
	}
}

// Unpinned only: a key an operator set (SetLimit, or an inline key pinned
// since) is kept; without it, every matching key goes.
func TestDeleteLimitsUnpinnedOnlySkipsPinned(t *testing.T) {
	r := newRig(t)
	for i := range 20 {
		r.inline(fmt.Sprintf("t/%02d", i))
	}
	r.setLimit("t/05", bulkLimit)                               // pins the inline key
	r.setLimit("t/99", Limit{Algorithm: Concurrency, Limit: 3}) // set by the operator
	res := r.ok(&DeleteLimits{Prefix: "t/", UnpinnedOnly: true})
	if want := (Deleted{Keys: 19, LastKey: "t/99"}); *res.Deleted != want {
		t.Errorf("Deleted %+v, want %+v", *res.Deleted, want)
	}
	if got, want := keysOf(r.m), []string{"t/05", "t/99"}; !slices.Equal(got, want) {
		t.Fatalf("keys left %q, want %q", got, want)
	}
	if _, pinned, _ := r.m.Lookup("t/05"); !pinned {
		t.Error("t/05 is no longer pinned")
	}
	res = r.ok(&DeleteLimits{Prefix: "t/"})
	if want := (Deleted{Keys: 2, LastKey: "t/99"}); *res.Deleted != want {
		t.Errorf("without unpinned only: Deleted %+v, want %+v", *res.Deleted, want)
	}
	if n := r.m.Stats().Keys; n != 0 {
		t.Errorf("%d keys left, want 0", n)
	}
}

// At most MaxDeleteExamined keys per entry, the first in byte order, and
// More says there are others.
func TestDeleteLimitsAtMostNPerEntry(t *testing.T) {
	r := newRig(t)
	const n = 2*MaxDeleteExamined + 7
	for i := range n {
		r.inline(fmt.Sprintf("k/%05d", (i*7919)%n)) // not in byte order
	}
	res := r.ok(&DeleteLimits{Prefix: "k/", UnpinnedOnly: true})
	want := Deleted{Keys: MaxDeleteExamined, LastKey: fmt.Sprintf("k/%05d", MaxDeleteExamined-1), More: true}
	if *res.Deleted != want {
		t.Fatalf("first entry: %+v, want %+v", *res.Deleted, want)
	}
	if got := keysOf(r.m)[0]; got != fmt.Sprintf("k/%05d", MaxDeleteExamined) {
		t.Errorf("first key left %q, want the 1001st", got)
	}
	deleted, entries := r.deleteAll("k/", true)
	if deleted != n-MaxDeleteExamined || entries != 2 || r.m.Stats().Keys != 0 {
		t.Errorf("the rest: %d deleted in %d entries, %d keys left; want %d in 2, 0 left",
			deleted, entries, r.m.Stats().Keys, n-MaxDeleteExamined)
	}
}

// Pinned keys count as examined, and the cursor moves past them: keys set
// by the operator never make a later entry examine them again, so a prefix
// with more pinned keys than one entry examines still ends.
func TestDeleteLimitsCursorContinuesPastSkipped(t *testing.T) {
	r := newRig(t)
	const pinned, unpinned = 2500, 1500
	for i := range pinned {
		r.setLimit(fmt.Sprintf("p/%05d", 2*i), bulkLimit)
	}
	for i := range unpinned {
		r.inline(fmt.Sprintf("p/%05d", 2*i+1))
	}
	res := r.ok(&DeleteLimits{Prefix: "p/", UnpinnedOnly: true})
	if d := res.Deleted; d.Keys != MaxDeleteExamined/2 || d.LastKey != fmt.Sprintf("p/%05d", MaxDeleteExamined-1) || !d.More {
		t.Fatalf("first entry: %+v, want %d deleted of the first %d keys, more", d, MaxDeleteExamined/2, MaxDeleteExamined)
	}
	deleted, entries := r.deleteAll("p/", true)
	// From the start again: 3500 keys left, 4 entries.
	if deleted != unpinned-MaxDeleteExamined/2 || entries != 4 {
		t.Errorf("%d deleted in %d entries, want %d in 4", deleted, entries, unpinned-MaxDeleteExamined/2)
	}
	listed, _ := r.m.List("", "", 1<<30, false)
	for _, k := range listed {
		if !k.Pinned {
			t.Fatalf("unpinned key %q left", k.Key)
		}
	}
	if n := r.m.Stats().Keys; n != pinned {
		t.Errorf("%d keys left, want the %d pinned", n, pinned)
	}
}

// DeleteLimits does to each key what DeleteLimit does: the same keys are
// left, and a lease granted before the delete refunds nothing into a key
// its holder's next acquire creates again (it starts full).
func TestDeleteLimitsActsAsDeleteLimit(t *testing.T) {
	build := func() *rig {
		r := newRig(t)
		for i := range 30 {
			r.inline(fmt.Sprintf("x/%02d", i))
		}
		r.setLimit("x/07", bulkLimit)
		l := Limit{Algorithm: TokenBucket, Limit: 10, Period: time.Hour, MaxLease: time.Minute}
		r.ok(&Acquire{ClientID: "c", Seq: 1, Items: []Item{{Key: "x/leased", Count: 4, Limit: &l}}, TTL: time.Minute})
		return r
	}
	one, bulk := build(), build()
	for _, k := range keysOf(one.m) {
		if _, pinned, _ := one.m.Lookup(k); !pinned {
			one.ok(&DeleteLimit{Key: k})
		}
	}
	if d := bulk.ok(&DeleteLimits{Prefix: "x/", UnpinnedOnly: true}).Deleted; d.Keys != 30 {
		t.Errorf("deleted %d, want 30", d.Keys)
	}
	if got, want := keysOf(bulk.m), keysOf(one.m); !slices.Equal(got, want) {
		t.Errorf("keys left %q, DeleteLimit leaves %q", got, want)
	}
	for _, r := range []*rig{one, bulk} {
		l := Limit{Algorithm: TokenBucket, Limit: 10, Period: time.Hour, MaxLease: time.Minute}
		r.ok(&Acquire{ClientID: "c", Seq: 2, Items: []Item{{Key: "x/leased", Count: 1, Limit: &l}}})
		r.ok(&Release{ClientID: "c", Seq: 3, LeaseID: 1}) // 4 unused: refunds nothing
	}
	if a, b := one.remaining("x/leased", 0), bulk.remaining("x/leased", 0); a != b || b != 9 {
		t.Errorf("x/leased after the release: %d remaining in bulk, %d with DeleteLimit; want 9", b, a)
	}
	if a, b := one.m.lessees("x/leased"), bulk.m.lessees("x/leased"); a != b {
		t.Errorf("x/leased lessees: %d in bulk, %d with DeleteLimit", b, a)
	}
}

// A prefix or cursor longer than a key is refused in Apply, as the API
// refuses it, and deletes nothing.
func TestDeleteLimitsRefusesLongPrefix(t *testing.T) {
	r := newRig(t)
	r.inline("k")
	long := string(make([]byte, MaxKeyLen+1))
	for _, c := range []*DeleteLimits{{Prefix: long}, {StartAfter: long, UnpinnedOnly: true}} {
		if res := r.apply(c); res.Status != StatusInvalidKey || res.Deleted != nil {
			t.Errorf("%d-byte prefix, %d-byte cursor: %v %+v, want invalid-key", len(c.Prefix), len(c.StartAfter), res.Status, res.Deleted)
		}
	}
	if r.m.Stats().Keys != 1 {
		t.Error("a refused DeleteLimits deleted a key")
	}
}

// BenchmarkDeleteLimits is the Apply of one full DeleteLimits: finding the
// first MaxDeleteExamined matching keys and deleting them, at the default
// key cap (2M) and below it.
func BenchmarkDeleteLimits(b *testing.B) {
	for _, held := range []int{100_000, 1_000_000, 2_000_000} {
		b.Run(fmt.Sprint(held), func(b *testing.B) {
			r := benchHeldKeys(b, held)
			entry := Encode(nil, r.now, &DeleteLimits{Prefix: "tenant-", UnpinnedOnly: true})
			for b.Loop() {
				r.m.Apply(entry)
				b.StopTimer()
				for i := range MaxDeleteExamined { // put back what it deleted
					r.inline(fmt.Sprintf("tenant-%08d", i))
				}
				b.StartTimer()
			}
		})
	}
}

// benchHeldKeys returns a rig holding held keys tenant-%08d, created
// unpinned and drained as inline does (so never idle), in an order
// unrelated to their byte order, in entries of 1000 Acquires.
func benchHeldKeys(b *testing.B, held int) *rig {
	r := newRig(b)
	cmds := make([]Command, 0, 1000)
	for lo := 0; lo < held; lo += cap(cmds) {
		cmds = cmds[:0]
		for i := lo; i < min(lo+cap(cmds), held); i++ {
			key := fmt.Sprintf("tenant-%08d", (i*7919)%held)
			cmds = append(cmds, &Acquire{Items: []Item{{Key: key, Count: 10, Limit: &bulkLimit}}})
		}
		for i, res := range r.m.Apply(Encode(nil, r.now, &Batch{Commands: cmds})) {
			if res.Status != StatusOK {
				b.Fatalf("key %d: %v %s", lo+i, res.Status, res.Message)
			}
		}
	}
	if got := r.m.Stats().Keys; got != held {
		b.Fatalf("%d keys, want %d", got, held)
	}
	return r
}
