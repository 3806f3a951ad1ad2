package cluster

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/raft"

	"github.com/leasehold/leasehold/fsm"
)

// fakeFuture is a raft.ApplyFuture the test resolves by hand.
type fakeFuture struct {
	done chan struct{}
	err  error
	resp any
}

func (f *fakeFuture) Error() error  { <-f.done; return f.err }
func (f *fakeFuture) Index() uint64 { return 0 }
func (f *fakeFuture) Response() any { return f.resp }

// fakeRaft records the entries a batcher submits, in order. With
// writeAtOnce, the leader's log write of each entry ends as it is submitted
// (a disk that takes no time); without, the test ends writes with written.
type fakeRaft struct {
	mu          sync.Mutex
	ready       bool
	writeAtOnce bool
	b           *batcher
	entries     []*fakeEntry
}

type fakeEntry struct {
	cmds   []fsm.Command
	future *fakeFuture
}

func (r *fakeRaft) submit(cmds []fsm.Command) (raft.ApplyFuture, time.Duration, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.ready {
		return nil, 0, false
	}
	e := &fakeEntry{cmds: cmds, future: &fakeFuture{done: make(chan struct{})}}
	r.entries = append(r.entries, e)
	if r.writeAtOnce {
		r.b.stored(1)
	}
	return e.future, 0, true
}

// written ends the leader's log write of the next n entries.
func (r *fakeRaft) written(n int) { r.b.stored(n) }

func (r *fakeRaft) setReady(ready bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ready = ready
}

// sizes returns the number of commands of each submitted entry.
func (r *fakeRaft) sizes() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := make([]int, len(r.entries))
	for i, e := range r.entries {
		s[i] = len(e.cmds)
	}
	return s
}

func (r *fakeRaft) entry(i int) *fakeEntry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.entries[i]
}

// commit resolves entry i as applied: each acquire's result carries its seq
// as LeaseID, so a test can tell whose result a request got.
func (r *fakeRaft) commit(i int) {
	e := r.entry(i)
	rs := make([]fsm.Result, len(e.cmds))
	for j, c := range e.cmds {
		rs[j] = fsm.Result{Status: fsm.StatusOK, LeaseID: c.(*fsm.Acquire).Seq}
	}
	e.future.resp = rs
	close(e.future.done)
}

// fail resolves entry i with err.
func (r *fakeRaft) fail(i int, err error) {
	e := r.entry(i)
	e.future.err = err
	close(e.future.done)
}

// startBatcher runs a batcher on a ready fakeRaft until the test ends. Call
// it inside a synctest bubble.
func startBatcher(t *testing.T) (*fakeRaft, *batcher) {
	fr := &fakeRaft{ready: true, writeAtOnce: true}
	stop := make(chan struct{})
	b := newBatcher(fr.submit, stop)
	fr.b = b
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.run()
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
	})
	return fr, b
}

func acq(seq uint64) *fsm.Acquire {
	return &fsm.Acquire{ClientID: "c", Seq: seq, Items: []fsm.Item{{Key: "k", Count: 1}}}
}

// enqueue queues an acquire with seq and returns its request.
func enqueue(b *batcher, seq uint64) *request {
	r := newRequest(acq(seq))
	b.enqueue(r)
	return r
}

// enqueueTogether queues acquires with seqs as one arrival. Callers meant
// to arrive together must be queued so: queued one by one, the batcher's
// goroutine (which synctest does not hold back) can run between two of
// them and seal the first part alone. Regression:
// TestBatcherMergesCallersSplitOverTwoEntries saw entries [1 2 3] where
// [1 2 5] was meant, once under -race -count=5.
func enqueueTogether(b *batcher, seqs ...uint64) []*request {
	rs := make([]*request, len(seqs))
	for i, seq := range seqs {
		rs[i] = newRequest(acq(seq))
	}
	b.enqueue(rs...)
	return rs
}

// wantResult receives r's outcome and checks that it is its own result.
func wantResult(t *testing.T, r *request) {
	t.Helper()
	o := <-r.done
	seq := r.cmd.(*fsm.Acquire).Seq
	if o.err != nil || o.res.LeaseID != seq {
		t.Errorf("request %d: outcome %+v; want its own result (lease %d)", seq, o, seq)
	}
}

// fillPipeline enqueues maxInflight requests, one at a time, with seqs from
// first on; each is sealed alone, at once.
func fillPipeline(t *testing.T, fr *fakeRaft, b *batcher, first uint64) []*request {
	t.Helper()
	var rs []*request
	for i := range maxInflight {
		rs = append(rs, enqueue(b, first+uint64(i)))
		synctest.Wait()
	}
	if got := fr.sizes(); len(got) != maxInflight {
		t.Fatalf("entries after %d lone requests: %v; want %d entries of one", maxInflight, got, maxInflight)
	}
	return rs
}

// TestBatcherSealsALoneRequestAtOnce: with nothing in flight, a request is
// handed to Raft alone and without any time passing: no timer delays it.
// Sequential requests on an idle node each get their own entry at once.
func TestBatcherSealsALoneRequestAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fr, b := startBatcher(t)
		start := time.Now()
		for i := range 3 {
			r := enqueue(b, uint64(i+1))
			synctest.Wait() // every other goroutine is blocked; fake time has not moved
			if got := fr.sizes(); !cmp.Equal(got, make1s(i+1)) {
				t.Fatalf("entries after request %d: %v; want %v", i+1, got, make1s(i+1))
			}
			fr.commit(i)
			wantResult(t, r)
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("fake time moved by %v; a lone request must not wait for a timer", d)
		}
	})
}

func make1s(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = 1
	}
	return s
}

// TestBatcherAccumulatesWhileInFlight: up to maxInflight entries are in
// flight; requests arriving meanwhile wait, and go in one entry, in arrival
// order, as soon as a slot frees. Every request gets its own result.
func TestBatcherAccumulatesWhileInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fr, b := startBatcher(t)
		first := fillPipeline(t, fr, b, 1)
		var queued []*request
		for i := range 10 {
			queued = append(queued, enqueue(b, uint64(100+i)))
		}
		synctest.Wait()
		if got := fr.sizes(); len(got) != maxInflight {
			t.Fatalf("entries with the pipeline full: %v; want still %d", got, maxInflight)
		}
		fr.commit(0)
		wantResult(t, first[0])
		synctest.Wait()
		got := fr.sizes()
		if len(got) != maxInflight+1 || got[maxInflight] != 10 {
			t.Fatalf("entries after a slot freed: %v; want a new one of 10", got)
		}
		for i, c := range fr.entry(maxInflight).cmds {
			if s := c.(*fsm.Acquire).Seq; s != uint64(100+i) {
				t.Errorf("command %d of the batch has seq %d; want %d (arrival order)", i, s, 100+i)
			}
		}
		for i := 1; i <= maxInflight; i++ {
			fr.commit(i)
		}
		for _, r := range append(first[1:], queued...) {
			wantResult(t, r)
		}
	})
}

// TestBatcherSealsWhenTheDiskIsFree: group commit follows the leader's disk.
// A request is sealed at once on an idle leader; requests arriving while its
// entry is being written wait, with a slot free, and go out together in one
// entry when the write ends (not one entry each, as a rule sealing whenever
// a slot is free would give); a full batch does not wait for the disk; an
// entry answered without a reported write (a lost leadership) does not hold
// the next batch back.
func TestBatcherSealsWhenTheDiskIsFree(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fr, b := startBatcher(t)
		fr.mu.Lock()
		fr.writeAtOnce = false
		fr.mu.Unlock()
		first := enqueue(b, 1)
		synctest.Wait()
		if got := fr.sizes(); !cmp.Equal(got, []int{1}) {
			t.Fatalf("entries after a lone request: %v; want [1]", got)
		}
		var queued []*request
		for i := range 7 {
			queued = append(queued, enqueue(b, uint64(10+i)))
			synctest.Wait()
		}
		if got := fr.sizes(); !cmp.Equal(got, []int{1}) {
			t.Fatalf("entries while the first is being written: %v; want still [1] (slots free: %d)", got, maxInflight-1)
		}
		fr.written(1)
		synctest.Wait()
		if got := fr.sizes(); !cmp.Equal(got, []int{1, 7}) {
			t.Fatalf("entries after the write ended: %v; want [1 7]", got)
		}

		// A full batch goes at once, though entry 1 is still being written.
		var full []*request
		for i := range maxBatchCommands + 1 {
			full = append(full, enqueue(b, uint64(1000+i)))
		}
		synctest.Wait()
		if got := fr.sizes(); !cmp.Equal(got, []int{1, 7, maxBatchCommands}) {
			t.Fatalf("entries after a full batch queued: %v; want [1 7 %d], the last one waiting", got, maxBatchCommands)
		}

		// Entries 1 and 2 answered without a write reported: the last
		// request no longer waits for them.
		fr.commit(1)
		fr.commit(2)
		synctest.Wait()
		if got := fr.sizes(); !cmp.Equal(got, []int{1, 7, maxBatchCommands, 1}) {
			t.Fatalf("entries after the unwritten ones were answered: %v; want [1 7 %d 1]", got, maxBatchCommands)
		}
		fr.commit(0)
		fr.commit(3)
		for _, r := range append(append([]*request{first}, queued...), full...) {
			wantResult(t, r)
		}
	})
}

// TestBatcherLimits: an entry holds at most maxBatchCommands commands and,
// by their size bounds, at most maxBatchBytes; the batcher fills each entry
// as far as the limits allow, in queue order.
func TestBatcherLimits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fr, b := startBatcher(t)
		fillPipeline(t, fr, b, 1)
		var rs []*request
		for i := range maxBatchCommands + 5 {
			rs = append(rs, enqueue(b, uint64(1000+i)))
		}
		// Commands of 8 items with the longest keys: a few KiB each.
		bigCmd := func(seq uint64) *fsm.Acquire {
			c := &fsm.Acquire{ClientID: "c", Seq: seq, TTL: time.Second}
			for k := range fsm.MaxItems {
				l := fsm.Limit{Algorithm: fsm.TokenBucket, Limit: 1, Period: time.Second}
				c.Items = append(c.Items, fsm.Item{Key: strings.Repeat(string(rune('a'+k)), fsm.MaxKeyLen), Count: 1, Limit: &l})
			}
			return c
		}
		for i := range maxBatchBytes/encodedSizeBound(bigCmd(0)) + 10 {
			r := newRequest(bigCmd(uint64(5000 + i)))
			b.enqueue(r)
			rs = append(rs, r)
		}
		for i := range maxInflight {
			fr.commit(i)
		}
		synctest.Wait()
		sizes := fr.sizes()
		for i := maxInflight; i < len(sizes); i++ {
			fr.commit(i)
		}
		for _, r := range rs {
			wantResult(t, r)
		}

		if len(sizes) < maxInflight+3 || sizes[maxInflight] != maxBatchCommands {
			t.Fatalf("entry sizes = %v; want %d lone ones, one of %d, then ones full by bytes",
				sizes, maxInflight, maxBatchCommands)
		}
		var cmds []fsm.Command
		for i := maxInflight; i < len(sizes); i++ {
			cmds = append(cmds, fr.entry(i).cmds...)
		}
		next := 0 // index in cmds of the entry's first command
		for i := maxInflight; i < len(sizes); i++ {
			e := fr.entry(i).cmds
			bytes := 0
			for _, c := range e {
				bytes += encodedSizeBound(c)
			}
			if len(e) > maxBatchCommands || bytes > maxBatchBytes {
				t.Errorf("entry %d: %d commands, %d bytes by bound; limits %d and %d",
					i, len(e), bytes, maxBatchCommands, maxBatchBytes)
			}
			if n := len(encodeEntry(math.MaxInt64, e)); n > maxBatchBytes {
				t.Errorf("entry %d is %d bytes encoded; want at most %d", i, n, maxBatchBytes)
			}
			next += len(e)
			if i < len(sizes)-1 && len(e) < maxBatchCommands && bytes+encodedSizeBound(cmds[next]) <= maxBatchBytes {
				t.Errorf("entry %d (%d commands, %d bytes) was sealed with room for the next command", i, len(e), bytes)
			}
		}
		if next != len(rs) {
			t.Errorf("entries hold %d commands; %d were queued", next, len(rs))
		}
	})
}

// TestBatcherEntryError: when an entry fails, every request in it gets the
// entry's error; requests in other entries get their results.
func TestBatcherEntryError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fr, b := startBatcher(t)
		first := fillPipeline(t, fr, b, 1)
		var lost []*request
		for i := range 5 {
			lost = append(lost, enqueue(b, uint64(100+i)))
		}
		fr.commit(0)
		synctest.Wait()
		fr.fail(maxInflight, raft.ErrLeadershipLost)
		for _, r := range lost {
			if o := <-r.done; !errors.Is(o.err, raft.ErrLeadershipLost) {
				t.Errorf("request %d in the failed entry: outcome %+v; want ErrLeadershipLost", r.cmd.(*fsm.Acquire).Seq, o)
			}
		}
		for i := 1; i < maxInflight; i++ {
			fr.commit(i)
		}
		for _, r := range first {
			wantResult(t, r)
		}

		// A committed entry whose response is not one result per command.
		r := enqueue(b, 200)
		synctest.Wait()
		e := fr.entry(maxInflight + 1)
		e.future.resp = []fsm.Result{{}, {}}
		close(e.future.done)
		if o := <-r.done; !errors.Is(o.err, errBadResponse) {
			t.Errorf("outcome of an entry with a bad response = %+v; want errBadResponse", o)
		}
	})
}

// TestBatcherWithdraw: a request withdrawn before it is proposed never
// reaches Raft and does not disturb the others; one withdrawn after it is
// proposed is reported as proposed.
func TestBatcherWithdraw(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fr, b := startBatcher(t)
		first := fillPipeline(t, fr, b, 1)
		r1, r2, r3 := enqueue(b, 11), enqueue(b, 12), enqueue(b, 13)
		if !b.withdraw(r2) {
			t.Fatal("withdraw of a queued request = false; want true (not proposed)")
		}
		fr.commit(0)
		synctest.Wait()
		var seqs []uint64
		for _, c := range fr.entry(maxInflight).cmds {
			seqs = append(seqs, c.(*fsm.Acquire).Seq)
		}
		if !cmp.Equal(seqs, []uint64{11, 13}) {
			t.Fatalf("batch after withdrawing 12 = %v; want [11 13]", seqs)
		}
		if b.withdraw(r1) {
			t.Error("withdraw of a proposed request = true; want false (outcome unknown)")
		}
		for i := 1; i <= maxInflight; i++ {
			fr.commit(i)
		}
		for _, r := range append(first, r1, r3) {
			wantResult(t, r)
		}
		select {
		case o := <-r2.done:
			t.Errorf("withdrawn request got an outcome: %+v", o)
		default:
		}
	})
}

// TestBatcherNotReady: a batch sealed while the node is not a ready leader is
// not proposed: its requests learn errNotProposed and may enqueue again.
func TestBatcherNotReady(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fr, b := startBatcher(t)
		fr.setReady(false)
		r := enqueue(b, 1)
		if o := <-r.done; !errors.Is(o.err, errNotProposed) {
			t.Fatalf("outcome on a node not ready = %+v; want errNotProposed", o)
		}
		if got := fr.sizes(); len(got) != 0 {
			t.Fatalf("entries = %v; want none", got)
		}
		fr.setReady(true)
		b.enqueue(r)
		synctest.Wait()
		fr.commit(0)
		wantResult(t, r)
	})
}

// TestEncodedSizeBound: the size bound holds for the largest fields and the
// largest values, alone and in a batch; encodeEntry round-trips.
func TestEncodedSizeBound(t *testing.T) {
	long := strings.Repeat("k", fsm.MaxKeyLen)
	maxLimit := fsm.Limit{Algorithm: fsm.SlidingWindow, Limit: math.MaxInt64, Period: math.MaxInt64,
		Burst: math.MaxInt64, Slots: math.MaxInt32, Strict: true, MaxLease: math.MaxInt64, MaxDebt: math.MaxInt64}
	negLimit := fsm.Limit{Algorithm: 255, Limit: -1, Period: -1, Burst: -1, Slots: -1, MaxLease: -1, MaxDebt: -1}
	full := &fsm.Acquire{ClientID: strings.Repeat("c", 300), Seq: math.MaxUint64, AckedBelow: math.MaxUint64, TTL: -1}
	for i := range fsm.MaxItems {
		l := negLimit
		full.Items = append(full.Items, fsm.Item{Key: long + fmt.Sprint(i), Count: -1, Want: math.MinInt64, Limit: &l})
	}
	charge := &fsm.Charge{ClientID: strings.Repeat("c", 300), Seq: math.MaxUint64, AckedBelow: math.MaxUint64}
	restrict := &fsm.Restrict{ClientID: strings.Repeat("c", 300), Seq: math.MaxUint64, AckedBelow: math.MaxUint64}
	for i := range fsm.MaxItems {
		l := negLimit
		charge.Items = append(charge.Items, fsm.ChargeItem{Key: long + fmt.Sprint(i), Tokens: -1, Limit: &l})
		restrict.Items = append(restrict.Items, fsm.RestrictItem{Key: long + fmt.Sprint(i), Remaining: math.MinInt64,
			BlockFor: -1, Limit: &l})
	}
	cmds := []fsm.Command{
		charge,
		restrict,
		&fsm.Charge{},
		&fsm.Restrict{Items: []fsm.RestrictItem{{Key: "k", Remaining: fsm.NoRemaining}}},
		&fsm.Extend{ClientID: "c", Seq: math.MaxUint64, AckedBelow: math.MaxUint64, LeaseID: math.MaxUint64, TTL: -1},
		&fsm.Extend{},
		&fsm.SetLimit{Key: long, Limit: maxLimit},
		&fsm.SetLimit{Key: "k", Limit: negLimit},
		&fsm.DeleteLimit{Key: long},
		&fsm.DeleteLimit{},
		&fsm.DeleteLimits{Prefix: long, StartAfter: long, UnpinnedOnly: true},
		&fsm.DeleteLimits{},
		full,
		acq(1),
		&fsm.Acquire{},
		&fsm.Release{ClientID: "c", Seq: math.MaxUint64, AckedBelow: math.MaxUint64, LeaseID: math.MaxUint64,
			Unused: []int64{-1, math.MaxInt64, 0, 1, -1, -1, -1, -1}},
		&fsm.Release{},
	}
	for _, c := range cmds {
		for _, now := range []int64{0, 1, math.MaxInt64, -1} {
			e := encodeEntry(now, []fsm.Command{c})
			if bound := entryOverhead + encodedSizeBound(c) - subOverhead; len(e) > bound {
				t.Errorf("%T alone: %d bytes; bound %d", c, len(e), bound)
			}
			gotNow, got, err := fsm.Decode(e)
			if err != nil || gotNow != now || !cmp.Equal(got, c) {
				t.Errorf("%T alone: decode = %d, %+v, %v; want %d, %+v", c, gotNow, got, err, now, c)
			}
		}
	}
	bound := entryOverhead
	for _, c := range cmds {
		bound += encodedSizeBound(c)
	}
	e := encodeEntry(-1, cmds)
	if len(e) > bound {
		t.Errorf("batch: %d bytes; bound %d", len(e), bound)
	}
	_, got, err := fsm.Decode(e)
	if err != nil || !cmp.Equal(got, &fsm.Batch{Commands: cmds}) {
		t.Errorf("batch: decode = %+v, %v; want the commands back", got, err)
	}
}

// commitAfter lets d of fake time pass, then commits entry i and receives
// the outcomes of rs, so that the batcher learns a commit time of d.
func commitAfter(t *testing.T, fr *fakeRaft, i int, d time.Duration, rs []*request) {
	t.Helper()
	time.Sleep(d) // fake time in the bubble: the commit took d
	fr.commit(i)
	for _, r := range rs {
		wantResult(t, r)
	}
	synctest.Wait()
}

// TestBatcherLingersForTheCallersAnswered: after an entry of 4 commits in
// 2ms, the first of its callers to come back waits for the other three (the
// batch is smaller than the 4 answered), and the four go out in one entry
// as soon as the last arrives, before the linger (half the commit time)
// ends. A request whose fellows do not come back is sealed when the linger
// ends, no later.
func TestBatcherLingersForTheCallersAnswered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fr, b := startBatcher(t)
		fr.mu.Lock()
		fr.writeAtOnce = false
		fr.mu.Unlock()
		rs := []*request{enqueue(b, 1)}
		synctest.Wait()
		for i := range 3 {
			rs = append(rs, enqueue(b, uint64(2+i)))
		}
		fr.written(1)
		synctest.Wait()
		fr.written(1)
		if got := fr.sizes(); !cmp.Equal(got, []int{1, 3}) {
			t.Fatalf("entries: %v; want [1 3]", got)
		}
		commitAfter(t, fr, 0, 2*time.Millisecond, rs[:1])
		commitAfter(t, fr, 1, 0, rs[1:]) // 2ms after it was sealed, too

		// The four come back 100µs apart: one entry, sealed on the
		// fourth's arrival.
		start := time.Now()
		var back []*request
		for i := range 4 {
			if i > 0 {
				time.Sleep(100 * time.Microsecond)
			}
			back = append(back, enqueue(b, uint64(10+i)))
			synctest.Wait()
			if want := []int{1, 3}; i < 3 && !cmp.Equal(fr.sizes(), want) {
				t.Fatalf("entries after %d of 4 came back: %v; want still %v", i+1, fr.sizes(), want)
			}
		}
		if got := fr.sizes(); !cmp.Equal(got, []int{1, 3, 4}) {
			t.Fatalf("entries after the 4 came back: %v; want [1 3 4]", got)
		}
		if d := time.Since(start); d != 300*time.Microsecond {
			t.Errorf("the entry of 4 was sealed %v after the first came back; want 300µs, at the fourth's arrival", d)
		}
		fr.written(1)
		commitAfter(t, fr, 2, 2*time.Millisecond, back)

		// Only one comes back: it waits the linger, 1ms, then goes alone.
		start = time.Now()
		lone := enqueue(b, 20)
		synctest.Wait()
		if got := fr.sizes(); len(got) != 3 {
			t.Fatalf("entries right after a lone caller came back: %v; want it lingering", got)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if got := fr.sizes(); !cmp.Equal(got, []int{1, 3, 4, 1}) {
			t.Fatalf("entries after the linger: %v; want [1 3 4 1]", got)
		}
		if d := time.Since(start); d != time.Millisecond {
			t.Errorf("a lone caller waited %v; want the linger, 1ms", d)
		}
		fr.written(1)
		commitAfter(t, fr, 3, 2*time.Millisecond, []*request{lone})

		// It was answered alone: coming back, it is sealed at once.
		start = time.Now()
		again := enqueue(b, 21)
		synctest.Wait()
		if got := fr.sizes(); !cmp.Equal(got, []int{1, 3, 4, 1, 1}) || time.Since(start) != 0 {
			t.Fatalf("entries after the lone caller came back again: %v after %v; want [1 3 4 1 1] at once", got, time.Since(start))
		}
		fr.written(1)
		commitAfter(t, fr, 4, 0, []*request{again})
	})
}

// TestBatcherMergesCallersSplitOverTwoEntries: callers answered by one entry
// wait for those of the entry still in flight (their commands count as
// expected), so the two groups go out in one entry.
func TestBatcherMergesCallersSplitOverTwoEntries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fr, b := startBatcher(t)
		// Teach the batcher a commit time of 2ms (linger 1ms).
		first := enqueue(b, 1)
		synctest.Wait()
		commitAfter(t, fr, 0, 2*time.Millisecond, []*request{first})
		time.Sleep(10 * time.Millisecond) // its caller is gone

		a := enqueueTogether(b, 2, 3)
		synctest.Wait()
		fr.mu.Lock()
		fr.writeAtOnce = false
		fr.mu.Unlock()
		// a went out in one entry (the two arrived together); the next
		// five while nothing was being written, each alone but for the
		// disk: sealed as one entry of 5 once the write ends.
		c := enqueueTogether(b, 10, 11, 12, 13, 14)
		synctest.Wait()
		fr.written(1)
		synctest.Wait()
		if got := fr.sizes(); !cmp.Equal(got, []int{1, 2, 5}) {
			t.Fatalf("entries: %v; want [1 2 5]", got)
		}
		fr.written(1)
		commitAfter(t, fr, 1, 2*time.Millisecond, a)
		// a's two come back while c's five are in flight: they wait.
		back := []*request{enqueue(b, 20), enqueue(b, 21)}
		synctest.Wait()
		if got := fr.sizes(); len(got) != 3 {
			t.Fatalf("entries after a's callers came back: %v; want them lingering for c's", got)
		}
		time.Sleep(200 * time.Microsecond)
		commitAfter(t, fr, 2, 0, c)
		for i := range 5 {
			back = append(back, enqueue(b, uint64(30+i)))
		}
		synctest.Wait()
		if got := fr.sizes(); !cmp.Equal(got, []int{1, 2, 5, 7}) {
			t.Fatalf("entries after c's callers came back: %v; want [1 2 5 7]", got)
		}
		fr.written(1)
		commitAfter(t, fr, 3, 0, back)
	})
}

// TestBatcherDoesNotHoldALoneCallerAfterASlowCommit: one caller, each
// request sent when the last is answered, is sealed at once even when a
// commit took longer than the caller's previous round (a rule counting the
// answers within the last commit time counted its own two answers and held
// it: 1 × 1 got 0.1–0.2 ms slower at the median).
func TestBatcherDoesNotHoldALoneCallerAfterASlowCommit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fr, b := startBatcher(t)
		for i, d := range []time.Duration{time.Millisecond, 3 * time.Millisecond, time.Millisecond, 5 * time.Millisecond, 0} {
			start := time.Now()
			r := enqueue(b, uint64(i+1))
			synctest.Wait()
			if got := fr.sizes(); len(got) != i+1 || time.Since(start) != 0 {
				t.Fatalf("request %d: entries %v after %v; want %d, at once", i+1, got, time.Since(start), i+1)
			}
			commitAfter(t, fr, i, d, []*request{r})
		}
	})
}
