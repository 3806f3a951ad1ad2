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
