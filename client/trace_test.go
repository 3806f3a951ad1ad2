package client_test

import (
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
)

// traceLog records every trace event, for the tests below.
type traceLog struct {
	mu       sync.Mutex
	starts   []client.AcquireStartInfo
	dones    []client.AcquireDoneInfo
	admits   []client.AdmitInfo
	relStart []client.ReleaseStartInfo
	relDone  []client.ReleaseDoneInfo
}

func (r *traceLog) trace() *client.Trace {
	return &client.Trace{
		AcquireStart: func(i client.AcquireStartInfo) { r.mu.Lock(); r.starts = append(r.starts, i); r.mu.Unlock() },
		AcquireDone:  func(i client.AcquireDoneInfo) { r.mu.Lock(); r.dones = append(r.dones, i); r.mu.Unlock() },
		Admit:        func(i client.AdmitInfo) { r.mu.Lock(); r.admits = append(r.admits, i); r.mu.Unlock() },
		ReleaseStart: func(i client.ReleaseStartInfo) { r.mu.Lock(); r.relStart = append(r.relStart, i); r.mu.Unlock() },
		ReleaseDone:  func(i client.ReleaseDoneInfo) { r.mu.Lock(); r.relDone = append(r.relDone, i); r.mu.Unlock() },
	}
}

// The trace accounts for every token: each admission names a lease the
// trace saw granted, each lease's admissions plus what Close gave back equal
// its grant, and every Acquire and Release is reported once at each end.
func TestTraceAccountsForEveryToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		var rec traceLog
		c := f.dial(t, client.WithTrace(rec.trace()), client.WithClientID([]byte("c1")))
		l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: 1000, Per: time.Second, Burst: 100}))
		admitted := 0
		for range 300 {
			if l.Allow() {
				admitted++
			}
			time.Sleep(time.Millisecond)
		}
		if err := c.Close(); err != nil {
			t.Fatalf("Close = %v", err)
		}

		rec.mu.Lock()
		defer rec.mu.Unlock()
		if len(rec.starts) == 0 || len(rec.starts) != len(rec.dones) {
			t.Fatalf("acquire starts, dones = %d, %d; want equal and > 0", len(rec.starts), len(rec.dones))
		}
		starts := map[uint64]client.AcquireStartInfo{}
		for _, s := range rec.starts {
			if string(s.ClientID) != "c1" || s.Key != "k" || s.TTL <= 0 || s.Count < 1 || s.Want < s.Count || s.Sent.IsZero() {
				t.Errorf("AcquireStart %+v: want client c1, key k, a lease TTL, 1 <= count <= want, a send time", s)
			}
			starts[s.Seq] = s
		}
		granted := map[uint64]int64{}
		for _, d := range rec.dones {
			if _, ok := starts[d.Seq]; !ok {
				t.Errorf("AcquireDone seq %d without its AcquireStart", d.Seq)
			}
			if d.Err != nil || !d.Allowed || d.LeaseID == 0 || d.Granted <= 0 || d.TTL <= 0 {
				continue // a denial, perhaps
			}
			granted[d.LeaseID] = d.Granted
		}
		spent := map[uint64]int64{}
		var total int64
		for _, a := range rec.admits {
			if a.Source != client.AdmitLeased || a.Key != "k" || a.N != 1 {
				t.Errorf("Admit %+v: want a leased admission of 1 token of k", a)
			}
			if _, ok := granted[a.LeaseID]; !ok {
				t.Errorf("Admit from lease %d, which the trace never saw granted", a.LeaseID)
			}
			spent[a.LeaseID] += a.N
			total += a.N
		}
		if total != int64(admitted) {
			t.Errorf("admissions traced = %d, Allow returned true %d times", total, admitted)
		}
		if len(rec.relStart) != len(rec.relDone) {
			t.Errorf("release starts, dones = %d, %d; want equal", len(rec.relStart), len(rec.relDone))
		}
		for _, r := range rec.relStart {
			spent[r.LeaseID] += r.Unused
		}
		for _, r := range rec.relDone {
			if r.Err != nil || !r.Released {
				t.Errorf("ReleaseDone %+v: want released", r)
			}
		}
		for id, g := range granted {
			if spent[id] != g {
				t.Errorf("lease %d: admitted + given back = %d, granted %d", id, spent[id], g)
			}
		}
	})
}

// Central and fallback admissions are traced with lease 0 and their source.
func TestTraceCentralAndFallback(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		var rec traceLog
		c := f.dial(t, client.WithTrace(rec.trace()), client.WithFailurePolicy(client.FailOpen))
		tiny := c.Limiter("tiny", client.Limit{Rate: 1, Per: time.Second})
		if !tiny.Allow() {
			t.Fatal("central Allow = false, want true")
		}
		f.set(func(f *fakeCluster) { f.mu.down = true })
		open := client.LeasingForTest(c.Limiter("open", client.Limit{Rate: 1000, Per: time.Second}))
		if !open.Allow() {
			t.Fatal("fail-open Allow with the cluster down = false, want true")
		}

		rec.mu.Lock()
		defer rec.mu.Unlock()
		want := []client.AdmitInfo{
			{Key: "tiny", N: 1, Source: client.AdmitCentral},
			{Key: "open", N: 1, Source: client.AdmitFallback},
		}
		if len(rec.admits) != len(want) {
			t.Fatalf("admits = %+v, want %+v", rec.admits, want)
		}
		for i := range want {
			if rec.admits[i] != want[i] {
				t.Errorf("admit %d = %+v, want %+v", i, rec.admits[i], want[i])
			}
		}
		var failed int
		for _, d := range rec.dones {
			if d.Err != nil {
				failed++
			}
		}
		if failed == 0 {
			t.Error("no AcquireDone with an error while the cluster was down")
		}
	})
}

// A central admission is reported on the goroutine that called Allow, before
// it returns, also when the Acquire that decided it carried other callers'
// requests and was sent from the Limiter's sender goroutine. Regression test:
// the sender reported the admissions it handed out on its own goroutine.
func TestTraceCentralAdmitOnCallersGoroutine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		const callers = 8
		var (
			mu        sync.Mutex
			elsewhere []string // stacks of Admit calls not made by a caller
			admits    int
		)
		trace := &client.Trace{Admit: func(client.AdmitInfo) {
			buf := make([]byte, 64<<10)
			stack := string(buf[:runtime.Stack(buf, false)])
			mu.Lock()
			defer mu.Unlock()
			admits++
			if !strings.Contains(stack, "client.(*Limiter).Allow(") {
				elsewhere = append(elsewhere, stack)
			}
		}}
		c := f.dial(t, client.WithTrace(trace))
		l := c.Limiter("strict", client.Limit{Rate: 100, Per: time.Second, Strict: true})
		release := f.holdAcquires()
		allow := func() {
			if !l.Allow() {
				t.Error("Allow = false, want true")
			}
		}
		// The first Allow alone, so that its Acquire is in flight before
		// the others queue: started together, they may all go in one.
		var wg sync.WaitGroup
		wg.Go(allow)
		synctest.Wait() // the first Acquire waits in the fake
		for range callers - 1 {
			wg.Go(allow)
		}
		synctest.Wait() // the others queue behind it
		release()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		if admits != callers || len(f.acquires()) != 2 {
			t.Errorf("%d admits in %d acquires, want %d in 2", admits, len(f.acquires()), callers)
		}
		for _, s := range elsewhere {
			t.Errorf("Admit called off the caller's goroutine:\n%s", s)
		}
	})
}
