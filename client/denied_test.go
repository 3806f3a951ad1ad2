package client_test

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
)

// deniedLimiter returns a Limiter whose key the cluster refuses for an hour,
// with that refusal remembered: every Allow is a denial.
func deniedLimiter(b *testing.B) *client.Limiter {
	f := newFake(b, 1)
	c := f.dial(b)
	f.set(func(f *fakeCluster) { f.mu.denyUntil = time.Now().Add(time.Hour) })
	l := client.LeasingForTest(c.Limiter("bench", client.Limit{Rate: 1000, Per: time.Second}))
	if l.Allow() {
		b.Fatal("Allow = true on a denied key")
	}
	return l
}

// BenchmarkAllowDenied is Allow while a denial is remembered, one goroutine.
func BenchmarkAllowDenied(b *testing.B) {
	l := deniedLimiter(b)
	b.ReportAllocs()
	for b.Loop() {
		if l.Allow() {
			b.Fatal("Allow = true on a denied key")
		}
	}
}

// BenchmarkAllowDeniedParallel is Allow while a denial is remembered, from
// GOMAXPROCS goroutines: the saturated hot key.
func BenchmarkAllowDeniedParallel(b *testing.B) {
	l := deniedLimiter(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if l.Allow() {
				b.Error("Allow = true on a denied key")
				return
			}
		}
	})
}

// While a denial is remembered and no lease is held, Allow refuses at once:
// no Acquire, and no wait on the Limiter's mutex (held here throughout).
// The refusals still count as demand.
func TestDeniedAllowTakesNoLockAndNoRPC(t *testing.T) {
	f := newFake(t, 1)
	c := f.dial(t)
	f.set(func(f *fakeCluster) { f.mu.denyUntil = time.Now().Add(time.Hour) })
	l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: 1000, Per: time.Second}))
	if l.Allow() {
		t.Fatal("first Allow = true on a denied key")
	}
	before := len(f.acquires())
	if before == 0 {
		t.Fatal("no Acquire for the first Allow")
	}
	const calls = 1000
	unlock := client.LockForTest(l)
	done := make(chan int)
	go func() {
		admitted := 0
		for range calls {
			if l.Allow() {
				admitted++
			}
		}
		done <- admitted
	}()
	select {
	case admitted := <-done:
		unlock()
		if admitted != 0 {
			t.Errorf("admitted %d of %d during a remembered denial, want 0", admitted, calls)
		}
	case <-time.After(30 * time.Second):
		unlock()
		<-done
		t.Fatal("Allow during a remembered denial waited on the Limiter's mutex")
	}
	if got := len(f.acquires()); got != before {
		t.Errorf("Acquires = %d after %d denied Allows, want %d (none)", got, calls, before)
	}
	if got := client.RefusedForTest(l); got != calls {
		t.Errorf("refused tokens counted = %d, want %d", got, calls)
	}
}

// The remembered denial ends at its retry-after: the next Allow asks again.
func TestDeniedAllowAsksAgainAfterRetryAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		t0 := time.Now()
		f.set(func(f *fakeCluster) { f.mu.denyUntil = t0.Add(5 * time.Second) })
		l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: 1000, Per: time.Second}))
		if l.Allow() {
			t.Fatal("first Allow = true on a denied key")
		}
		n := len(f.acquires())
		time.Sleep(5*time.Second - time.Since(t0) - time.Millisecond)
		if l.Allow() {
			t.Fatal("Allow before the retry-after = true")
		}
		if got := len(f.acquires()); got != n {
			t.Fatalf("Acquires before the retry-after = %d, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
		if !l.Allow() {
			t.Fatal("Allow at the retry-after = false, want true (the cluster admits again)")
		}
		if got := len(f.acquires()); got <= n {
			t.Errorf("Acquires after the retry-after = %d, want more than %d", got, n)
		}
	})
}

// A lease that comes with a pace (the cluster's "your next share is not there
// before then", on a contended key) is spent as usual; once it is spent,
// Allow refuses without asking the cluster until the pace has passed, and
// Wait waits it out. Without a pace the drained Limiter asks again at once:
// that loop was one Raft write per token on a saturated key.
func TestPacedLeaseIsNotRefreshedEarly(t *testing.T) {
	const pace = 500 * time.Millisecond
	for _, tt := range []struct {
		name string
		pace time.Duration
	}{{"paced", pace}, {"not paced", 0}} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 1)
				c := f.dial(t)
				f.set(func(f *fakeCluster) { f.mu.pace = tt.pace })
				l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: 100, Per: time.Second}))
				t0 := time.Now()
				admitted := 0
				for l.Allow() {
					admitted++
					if admitted > 100 {
						break
					}
				}
				synctest.Wait() // any refresh the spending started has run
				n := len(f.acquires())
				if tt.pace == 0 {
					if admitted <= int(f.granted()[0]) || n < 2 {
						t.Errorf("not paced: admitted %d on %d Acquires, want more than the first grant of %d", admitted, n, f.granted()[0])
					}
					return
				}
				if n != 1 || admitted != int(f.granted()[0]) {
					t.Fatalf("paced: admitted %d on %d Acquires, want the first lease's %d on 1", admitted, n, f.granted()[0])
				}
				time.Sleep(pace - time.Since(t0) - time.Millisecond)
				if l.Allow() || len(f.acquires()) != 1 {
					t.Fatalf("Allow within the pace: admitted or asked (%d Acquires)", len(f.acquires()))
				}
				if err := l.Wait(t.Context()); err != nil {
					t.Fatalf("Wait: %v", err)
				}
				if waited := time.Since(t0); waited < pace {
					t.Errorf("Wait returned %v after the paced grant, want at least %v", waited, pace)
				}
				if got := len(f.acquires()); got != 2 {
					t.Errorf("Acquires after the pace = %d, want 2", got)
				}
			})
		})
	}
}

// A Budget whose lease came with a pace, spent, asks the cluster for a
// caller whose deadline comes before the pace ends, rather than fail it
// with ErrWouldExceedDeadline: a pace is advice on when to ask, and the key
// may hold what the caller needs. In ai-demo (2026-12-06) whole processes
// stopped calling up to 1.6s before their run's end on a 2s pace while the
// key refilled for everyone, a loss of 6% of the provider's limit in a 20s
// row. It asks so at most every urgentEvery (a sixteenth of the lease's
// life); a caller that can wait for the pace still waits for it, with no
// Acquire.
func TestReserveDoesNotGiveUpOnAPace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const pace = time.Second
		f := newFake(t, 1)
		c := f.dial(t)
		// Sixteen lessees: a lease's share of the stock falls short of
		// its want, so it comes with the pace.
		f.set(func(f *fakeCluster) { f.mu.pace, f.mu.lessees = pace, 16 })
		rules := []client.Rule{{Counts: client.Tokens, Limit: client.Limit{Rate: 600, Per: time.Second}}}
		b := client.BudgetLeasingForTest(c.Budget("s", rules...))
		cost := client.Cost{InputTokens: 100}
		ctx := t.Context()
		t0 := time.Now()
		// Spend the first (paced) lease.
		for n := 0; ; n++ {
			r, err := b.TryReserve(cost)
			if err != nil {
				break
			}
			r.Settle(ctx, cost)
			if n > 1000 {
				t.Fatal("the first lease never ran out")
			}
		}
		asked := len(f.acquires())
		short, cancel := contextWithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		r, err := b.Reserve(short, cost)
		if err != nil {
			t.Fatalf("Reserve with 100ms left of a %v pace, the key full = %v; want a reservation", pace, err)
		}
		r.Settle(ctx, cost)
		if got := len(f.acquires()); got != asked+1 {
			t.Errorf("Acquires for the short caller = %d, want 1", got-asked)
		}
		if waited := time.Since(t0); waited >= pace {
			t.Errorf("the short caller waited %v, the whole pace", waited)
		}
		// A caller with time to wait for the pace waits for it, asking
		// nothing before it ends.
		asked = len(f.acquires())
		for {
			r, err := b.TryReserve(cost)
			if err != nil {
				break
			}
			r.Settle(ctx, cost)
		}
		paced := time.Now()
		r, err = b.Reserve(ctx, cost)
		if err != nil {
			t.Fatal(err)
		}
		r.Settle(ctx, cost)
		if waited := time.Since(paced); waited < 100*time.Millisecond {
			t.Errorf("a caller with no deadline was admitted %v after the lease ran out, within the pace", waited)
		}
		if got := len(f.acquires()); got != asked+1 {
			t.Errorf("Acquires for the patient caller = %d, want 1 (after the pace)", got-asked)
		}
	})
}
