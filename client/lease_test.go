package client_test

import (
	"fmt"
	"math"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
)

// validityOf is the usable life of a lease of ttl at the default ρ = 1e-3.
func validityOf(ttl time.Duration) time.Duration {
	return time.Duration(math.Floor(float64(ttl) * (1 - 1e-3) / (1 + 1e-3)))
}

// A lease is spent up to its deadline, sent + ttl·(1−ρ)/(1+ρ), and not one
// nanosecond after, whatever happens in between.
func TestLeaseUsedUntilDeadlineNotAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: 1000, Per: time.Second}))
		if got, want := validityOf(2*time.Second), 1996003996*time.Nanosecond; got != want {
			t.Fatalf("validity of 2s at ρ=1e-3 = %v, want %v", got, want)
		}
		t0 := time.Now()
		if !l.Allow() {
			t.Fatal("first Allow = false, want true")
		}
		f.set(func(f *fakeCluster) { f.mu.down = true })

		time.Sleep(validityOf(2*time.Second) - 1 - time.Since(t0))
		if !l.Allow() {
			t.Fatalf("Allow 1ns before the deadline = false, want true (held lease)")
		}
		time.Sleep(time.Nanosecond)
		if l.Allow() {
			t.Fatalf("Allow at the deadline = true, want false")
		}
		if got := l.State(); got != client.StateFallback {
			t.Errorf("State = %v, want %v", got, client.StateFallback)
		}
	})
}

// A process that sleeps (or is paused) past a lease's life wakes up to an
// expired lease: nothing is spent from it, and a new one is asked for.
func TestPausedProcessWakesToExpiredLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: 1000, Per: time.Second}))
		if !l.Allow() {
			t.Fatal("first Allow = false, want true")
		}
		time.Sleep(5 * time.Second) // no call in between: no timer, no refresh
		if n := len(f.acquires()); n != 1 {
			t.Fatalf("acquires while idle = %d, want 1 (no timer-driven refresh)", n)
		}
		f.set(func(f *fakeCluster) { f.mu.down = true })
		if l.Allow() {
			t.Fatal("Allow after the pause with the cluster down = true, want false (the lease expired)")
		}
		f.set(func(f *fakeCluster) { f.mu.down = false })
		time.Sleep(2 * time.Second) // past the refresh backoff
		// While the cluster is believed unreachable Allow never blocks: this
		// call follows the policy and starts a refresh in the background.
		t1 := time.Now()
		l.Allow()
		if d := time.Since(t1); d != 0 {
			t.Errorf("Allow with the cluster believed unreachable took %v, want 0", d)
		}
		synctest.Wait()
		if !l.Allow() {
			t.Fatal("Allow once the cluster is back = false, want true")
		}
		if got := l.State(); got == client.StateFallback {
			t.Errorf("State = %v once the cluster answered again", got)
		}
	})
}

// The lease's life counts from the moment the request was sent, not from the
// reply: a slow reply shortens the lease.
func TestLeaseDeadlineCountsFromSend(t *testing.T) {
	for _, tt := range []struct {
		name              string
		delay, replyDelay time.Duration
	}{
		{name: "slow apply", delay: 500 * time.Millisecond},
		{name: "slow reply", replyDelay: 700 * time.Millisecond},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 1)
				c := f.dial(t)
				l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: 1000, Per: time.Second}))
				f.set(func(f *fakeCluster) { f.mu.delay, f.mu.replyDelay = tt.delay, tt.replyDelay })
				t0 := time.Now()
				if !l.Allow() {
					t.Fatal("first Allow = false, want true")
				}
				if got, want := time.Since(t0), tt.delay+tt.replyDelay; got != want {
					t.Fatalf("first Allow took %v, want %v", got, want)
				}
				f.set(func(f *fakeCluster) { f.mu.down = true })
				time.Sleep(validityOf(2*time.Second) - 1 - time.Since(t0))
				if !l.Allow() {
					t.Fatal("Allow 1ns before send + validity = false, want true")
				}
				time.Sleep(time.Nanosecond)
				if l.Allow() {
					t.Fatal("Allow at send + validity = true, want false: the lease must count from the send")
				}
			})
		})
	}
}

// Allow does not wait for a refresh while it holds tokens: the refresh starts
// at the low-water mark, runs in the background, and only one is in flight.
func TestRefreshIsAsynchronous(t *testing.T) {
	// The first lease is 1/8 of the rate for a second: 125 tokens (one
	// stripe), or 12500 (striped, all spent by one goroutine).
	for _, rate := range []int64{1000, 100000} {
		t.Run(fmt.Sprint(rate), func(t *testing.T) { testRefreshIsAsynchronous(t, rate) })
	}
}

func testRefreshIsAsynchronous(t *testing.T, rate int64) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: rate, Per: time.Second}))
		if !l.Allow() {
			t.Fatal("first Allow = false, want true")
		}
		first := f.granted()[0]
		release := f.holdAcquires()
		t0 := time.Now()
		spent := int64(1)
		for ; spent < first && f.blocked() == 0; spent++ {
			if !l.Allow() {
				t.Fatalf("Allow #%d of a lease of %d = false", spent+1, first)
			}
			synctest.Wait()
		}
		if f.blocked() != 1 {
			t.Fatalf("no refresh started after spending %d of %d tokens", spent, first)
		}
		// The low-water mark is the demand (1/8 of the rate, as nothing
		// was measured yet) over a quarter of the 1s target period: a
		// quarter of the first lease.
		if low := (rate + 31) / 32; spent > first-low+1 || spent < first/2 {
			t.Errorf("refresh started after %d of %d tokens; want it when %d are left", spent, first, low)
		}
		// The rest of the lease is spent while the refresh waits, at once.
		for ; spent < first; spent++ {
			if !l.Allow() {
				t.Fatalf("Allow #%d of %d during the refresh = false", spent+1, first)
			}
		}
		synctest.Wait()
		if got := f.blocked(); got != 1 {
			t.Errorf("refreshes in flight = %d, want 1", got)
		}
		if d := time.Since(t0); d != 0 {
			t.Errorf("spending the lease took %v of fake time, want 0 (no waiting on the network)", d)
		}
		release()
		synctest.Wait()
		if got := len(f.acquires()); got != 2 {
			t.Fatalf("acquires = %d, want 2", got)
		}
		if !l.Allow() {
			t.Error("Allow after the refresh = false, want true")
		}
	})
}
