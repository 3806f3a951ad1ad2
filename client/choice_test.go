package client_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
)

// Issue 17: on many keys with modest limits, each visited now and then by
// every client, leases took a demand-sized extra token that the next client
// could not have: with every key asked less than its limit, half the
// requests were refused. Here 8 clients (one goroutine each, or 64) visit
// 100 keys of 8/s, burst 8, in turn, paced so that each key is asked half
// its limit, in the bench's order (worker i starts at key i, so the workers
// visit a key one after the other): every request must be admitted, with at
// most one request to the cluster per decision and no Release.
func TestModestKeysBelowLimitWereRefused(t *testing.T) {
	for _, goroutines := range []int{1, 64} {
		t.Run(fmt.Sprintf("8x%d", goroutines), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const (
					clients = 8
					keys    = 100
					rate    = 8
					demand  = 0.5 // of each key's limit
					run     = 10 * time.Second
				)
				f := newFake(t, 1)
				limit := client.Limit{Rate: rate, Per: time.Second, Burst: rate, MaxLease: 2 * time.Second}
				workers := clients * goroutines
				// workers·1s / interval calls a second in all = demand·rate·keys
				interval := time.Duration(float64(workers) * float64(time.Second) / (demand * rate * keys))
				var calls, refused atomic.Int64
				var wg sync.WaitGroup
				cs := make([]*client.Client, clients)
				for i := range cs {
					cs[i] = f.dial(t)
				}
				start := time.Now()
				for w := range workers {
					c := cs[w/goroutines]
					wg.Go(func() {
						time.Sleep(interval * time.Duration(w) / time.Duration(workers))
						for j := 0; time.Since(start) < run; j++ {
							k := (w + j) % keys
							if !c.Limiter(fmt.Sprintf("k%d", k), limit).Allow() {
								refused.Add(1)
							}
							calls.Add(1)
							time.Sleep(interval)
						}
					})
				}
				wg.Wait()
				synctest.Wait()
				t.Logf("%d calls, %d refused, %d acquires, %d releases", calls.Load(), refused.Load(), len(f.acquires()), len(f.releases()))
				if n := refused.Load(); n != 0 {
					t.Errorf("%d of %d requests refused, every key asked half its limit; want none", n, calls.Load())
				}
				if a := len(f.acquires()); int64(a) > calls.Load() {
					t.Errorf("%d acquires for %d decisions; want at most one each", a, calls.Load())
				}
				for _, c := range cs {
					c.Close()
				}
				if r := len(f.releases()); r != 0 {
					t.Errorf("%d releases; want none (nothing held that the cluster cannot let expire)", r)
				}
			})
		})
	}
}

// Issue 17: a key this client rarely touches cost two writes per decision,
// a lease's Acquire and, at Close, a Release of its expired leftover. Each
// decision is now one central Acquire (ttl 0), and Close releases nothing.
func TestColdKeyCostTwoWritesPerDecision(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		l := c.Limiter("cold", client.Limit{Rate: 1000, Per: time.Second})
		for i := range 5 {
			if !l.Allow() {
				t.Fatalf("Allow #%d = false, want true", i+1)
			}
			time.Sleep(5 * time.Second)
		}
		acq := f.acquires()
		if len(acq) != 5 {
			t.Errorf("%d acquires for 5 decisions, want 5", len(acq))
		}
		for i, a := range acq {
			checkCentralAcquire(t, i, a, 1, 1)
		}
		if got := l.State(); got != client.StateCentral {
			t.Errorf("State = %v, want %v", got, client.StateCentral)
		}
		c.Close()
		if r := len(f.releases()); r != 0 {
			t.Errorf("%d releases at Close, want 0", r)
		}
	})
}

// Issue 17: Close released every lease it had ever held, expired ones too,
// a Raft write each for nothing. It releases only leases still alive.
func TestCloseReleasedExpiredLeases(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: 1000, Per: time.Second, MaxLease: 2 * time.Second}))
		if !l.Allow() {
			t.Fatal("Allow = false, want true")
		}
		if len(f.granted()) != 1 || f.acquires()[0].req.GetTtlNs() == 0 {
			t.Fatalf("want one lease; got acquires %v", f.acquires())
		}
		time.Sleep(3 * time.Second) // the lease expires, with tokens left
		c.Close()
		if r := len(f.releases()); r != 0 {
			t.Errorf("%d releases of an expired lease at Close, want 0", r)
		}
	})
}

// A key used often enough leases after a few central decisions (its demand
// measured), and then asks the cluster a few times for many admissions.
func TestBusyKeySwitchesToLeases(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		l := c.Limiter("busy", client.Limit{Rate: 1000, Per: time.Second, MaxLease: 2 * time.Second})
		if got := l.State(); got != client.StateCentral {
			t.Fatalf("State of a new Limiter = %v, want %v", got, client.StateCentral)
		}
		for i := range 2000 {
			if !l.Allow() {
				t.Fatalf("Allow #%d = false, want true", i+1)
			}
			time.Sleep(2 * time.Millisecond) // 500/s
		}
		if got := l.State(); got != client.StateLeased {
			t.Errorf("State after 4s at 500/s = %v, want %v", got, client.StateLeased)
		}
		acq := f.acquires()
		central := 0
		for _, a := range acq {
			if a.req.GetTtlNs() == 0 {
				central++
			}
		}
		t.Logf("%d acquires (%d central) for 2000 admissions", len(acq), central)
		if central == 0 || central > 20 {
			t.Errorf("%d central decisions before leasing, want a few", central)
		}
		if len(acq) > 40 {
			t.Errorf("%d acquires for 2000 admissions at half the key's rate; want few", len(acq))
		}
	})
}

// A key shared by many lessees, where a lease's fair share of the key,
// ⌈F/n⌉, is below leaseAbove tokens, stays with central decisions however
// busy this client is: a lease would hold tokens the others need.
func TestCrowdedKeyStaysCentral(t *testing.T) {
	for _, tt := range []struct {
		lessees int32
		want    client.State
	}{
		// F = min(100/s · 2s, burst 100) = 100: 100/8 = 13 tokens a share.
		{lessees: 8, want: client.StateCentral},
		{lessees: 2, want: client.StateLeased}, // 50 a share
	} {
		t.Run(fmt.Sprintf("%d lessees", tt.lessees), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 1)
				f.set(func(f *fakeCluster) { f.mu.lessees = tt.lessees })
				c := f.dial(t)
				l := c.Limiter("crowded", client.Limit{Rate: 100, Per: time.Second, Burst: 100, MaxLease: 2 * time.Second})
				for range 300 {
					l.Allow()
					time.Sleep(10 * time.Millisecond) // 100/s: all of it
				}
				if got := l.State(); got != tt.want {
					t.Errorf("State = %v, want %v", got, tt.want)
				}
			})
		})
	}
}

// A denial is remembered until the send plus its retry-after: the cluster
// decided after the send, so the key has room again by then. Counting from
// the reply refused, for a round trip, requests the limit had room for.
func TestDenialRememberedFromTheReply(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		f.set(func(f *fakeCluster) { f.mu.replyDelay = 300 * time.Millisecond })
		c := f.dial(t)
		l := c.Limiter("k", client.Limit{Rate: 1, Per: time.Second})
		t0 := time.Now()
		if !l.Allow() { // applied at t0, answered at t0+300ms
			t.Fatal("first Allow = false, want true")
		}
		t1 := time.Now()
		if l.Allow() { // applied at t1: the token is back at t0+1s
			t.Fatal("second Allow = true, want false (burst 1)")
		}
		if d := t1.Sub(t0); d != 300*time.Millisecond {
			t.Fatalf("first Allow took %v, want the reply delay", d)
		}
		// Remembered until t1 + (t0+1s − t1) = t0+1s, not t1+300ms+700ms.
		time.Sleep(time.Until(t0.Add(time.Second + time.Millisecond)))
		before := len(f.acquires())
		if !l.Allow() {
			t.Error("Allow once the key has a token again = false, want true")
		}
		if len(f.acquires()) == before {
			t.Error("no Acquire sent once the retry-after, counted from the send, had passed")
		}
	})
}

// A key whose limit is far above what its clients ask leases at its second
// request, sized from the key's stock rather than from a demand still being
// measured: a lease of 1/64 of the stock leaves nobody short. (Without it, 8
// clients × 64 goroutines on 1000 such keys made 256 requests per 1000
// admitted, ramping each lease up from a token, and half the decisions/s.)
func TestHugeLimitLeasesAtSecondRequest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		l := c.Limiter("huge", client.Limit{Rate: 1e9, Per: time.Second, MaxLease: 2 * time.Second})
		for i := range 100 {
			if !l.Allow() {
				t.Fatalf("Allow #%d = false, want true", i+1)
			}
			time.Sleep(10 * time.Millisecond)
		}
		acq := f.acquires()
		if len(acq) != 2 {
			t.Fatalf("%d acquires for 100 admissions, want 2 (a central decision, then a lease)", len(acq))
		}
		checkCentralAcquire(t, 0, acq[0], 1, 1)
		if w := acq[1].req.GetItems()[0].GetWant(); acq[1].req.GetTtlNs() == 0 || w < (1_000_000_000-1)/64 {
			t.Errorf("second acquire: ttl %v, want %d; want a lease of at least the stock/64", time.Duration(acq[1].req.GetTtlNs()), w)
		}
	})
}
