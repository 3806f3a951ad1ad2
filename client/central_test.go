package client_test

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
)

// A key with too few tokens per lease period is decided centrally: one
// Acquire with ttl 0 per request, and a denial is remembered until its
// retry-after instead of asking again.
func TestTinyLimitGoesCentral(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		l := c.Limiter("tiny", client.Limit{Rate: 1, Per: time.Second})
		if got := l.State(); got != client.StateCentral {
			t.Fatalf("State = %v, want %v", got, client.StateCentral)
		}
		if !l.Allow() {
			t.Fatal("first Allow = false, want true")
		}
		if l.Allow() {
			t.Fatal("second Allow at once = true, want false (burst 1)")
		}
		if l.Allow() {
			t.Fatal("third Allow at once = true, want false")
		}
		if got := len(f.acquires()); got != 2 {
			t.Errorf("acquires = %d, want 2 (a denial is remembered until its retry-after)", got)
		}
		time.Sleep(time.Second)
		if !l.Allow() {
			t.Fatal("Allow a second later = false, want true")
		}
		for i, a := range f.acquires() {
			if a.req.GetTtlNs() != 0 {
				t.Errorf("acquire %d: ttl_ns = %d, want 0 (central)", i, a.req.GetTtlNs())
			}
			if it := a.req.GetItems()[0]; it.GetCount() != 1 || it.GetWant() != 1 {
				t.Errorf("acquire %d: count, want = %d, %d; want 1, 1", i, it.GetCount(), it.GetWant())
			}
		}
		if got := len(f.releases()); got != 0 {
			t.Errorf("releases = %d, want 0", got)
		}
	})
}

// A strict bucket whose reserve is the whole burst is central from the start,
// without asking.
func TestStrictBucketWithoutRoomIsCentral(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		l := c.Limiter("strict", client.Limit{Rate: 100, Per: time.Second, Strict: true})
		if got := l.State(); got != client.StateCentral {
			t.Fatalf("State = %v, want %v (reserve 200 >= burst 100)", got, client.StateCentral)
		}
	})
}

// A key the cluster answers with central decisions (ttl 0; a strict bucket)
// switches the Limiter to the central mode; the grant that said so is not
// lost.
func TestServerWithoutLeasesSwitchesToCentral(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		f.set(func(f *fakeCluster) { f.mu.noLease = true })
		c := f.dial(t)
		l := c.Limiter("strict", client.Limit{Rate: 1000, Per: time.Second, Burst: 5000, Strict: true})
		if got := l.State(); got != client.StateLeased {
			t.Fatalf("State before asking = %v, want %v", got, client.StateLeased)
		}
		if !l.Allow() {
			t.Fatal("first Allow = false, want true (the central grant is handed over)")
		}
		if got := l.State(); got != client.StateCentral {
			t.Fatalf("State = %v, want %v", got, client.StateCentral)
		}
		if !l.Allow() {
			t.Fatal("second Allow = false, want true")
		}
		acq := f.acquires()
		if len(acq) != 2 {
			t.Fatalf("acquires = %d, want 2", len(acq))
		}
		if got := acq[1].req.GetTtlNs(); got != 0 {
			t.Errorf("second acquire ttl_ns = %d, want 0", got)
		}
	})
}
