package client_test

import (
	"errors"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// Close marks leases dead and gives their unused tokens back.
func TestCloseReleasesUnusedTokens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: 1000, Per: time.Second}))
		for i := range 10 {
			if !l.Allow() {
				t.Fatalf("Allow #%d = false", i+1)
			}
		}
		synctest.Wait() // a refresh at the low-water mark, if any, lands
		granted := f.granted()
		var total int64
		for _, g := range granted {
			total += g
		}
		if err := c.Close(); err != nil {
			t.Fatalf("Close = %v", err)
		}
		var unused int64
		rels := f.releases()
		if len(rels) != len(granted) {
			t.Fatalf("releases = %d, want one per lease (%d)", len(rels), len(granted))
		}
		seen := map[uint64]bool{}
		for _, r := range rels {
			if seen[r.GetLeaseId()] {
				t.Errorf("lease %d released twice", r.GetLeaseId())
			}
			seen[r.GetLeaseId()] = true
			unused += r.GetUnused()[0]
		}
		if want := total - 10; unused != want {
			t.Errorf("unused tokens released = %d, want granted %d - spent 10 = %d", unused, total, want)
		}
		if l.Allow() {
			t.Error("Allow after Close = true, want false")
		}
		if err := l.Wait(t.Context()); !errors.Is(err, client.ErrClosed) {
			t.Errorf("Wait after Close = %v, want ErrClosed", err)
		}
		if got := l.State(); got != client.StateClosed {
			t.Errorf("State = %v, want %v", got, client.StateClosed)
		}
		if err := c.Close(); err != nil {
			t.Errorf("second Close = %v, want nil", err)
		}
		if got := c.Limiter("other", client.Limit{Rate: 1, Per: time.Second}).State(); got != client.StateClosed {
			t.Errorf("Limiter after Close: State = %v, want %v", got, client.StateClosed)
		}
	})
}

// clientGoroutines returns the stacks of goroutines running code of package
// client (not its tests).
func clientGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "leasehold/client.") && !strings.Contains(g, "client_test.") {
			out = append(out, g)
		}
	}
	return out
}

// Close waits for every goroutine the Client started, including a refresh
// stuck on a server that does not answer, and for blocked Waits to return.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 3)
		c := f.dial(t)
		l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: 1000, Per: time.Second}))
		central := c.Limiter("tiny", client.Limit{Rate: 1, Per: time.Minute})
		if !l.Allow() || !central.Allow() {
			t.Fatal("Allow = false, want true")
		}
		f.holdAcquires()            // never released: requests hang
		time.Sleep(3 * time.Second) // the lease expires
		waitErr := make(chan error, 3)
		go func() { waitErr <- l.Wait(t.Context()) }()
		go func() { waitErr <- central.Wait(t.Context()) }()
		synctest.Wait()
		go func() { waitErr <- central.Wait(t.Context()) }() // queued behind the one in flight
		synctest.Wait()
		t0 := time.Now()
		if err := c.Close(); err != nil {
			t.Fatalf("Close = %v", err)
		}
		if d := time.Since(t0); d > 2*time.Second {
			t.Errorf("Close took %v, want at most the request timeout", d)
		}
		for range 3 {
			if err := <-waitErr; !errors.Is(err, client.ErrClosed) && !errors.Is(err, client.ErrUnavailable) {
				t.Errorf("Wait during Close = %v, want ErrClosed", err)
			}
		}
		synctest.Wait()
		if gs := clientGoroutines(); len(gs) > 0 {
			t.Errorf("%d goroutines of package client left after Close:\n%s", len(gs), strings.Join(gs, "\n\n"))
		}
	})
}

// A lease granted while Close runs is given back whole; every token is
// accounted for.
func TestCloseDuringRefreshGivesNewLeaseBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: 1000, Per: time.Second}))
		admitted := int64(0)
		var release func()
		for l.Allow() {
			admitted++
			if admitted == 1 {
				release = f.holdAcquires()
			}
			synctest.Wait()
			if f.blocked() > 0 {
				break
			}
		}
		if f.blocked() != 1 {
			t.Fatal("no refresh in flight")
		}
		go func() {
			time.Sleep(100 * time.Millisecond)
			release()
		}()
		if err := c.Close(); err != nil {
			t.Fatalf("Close = %v", err)
		}
		granted := f.granted()
		if len(granted) != 2 {
			t.Fatalf("grants = %d, want 2 (the second during Close)", len(granted))
		}
		var total, unused int64
		for _, g := range granted {
			total += g
		}
		for _, r := range f.releases() {
			unused += r.GetUnused()[0]
		}
		if len(f.releases()) != 2 || unused != total-admitted {
			t.Errorf("%d releases of %d unused; want 2 releases of granted %d - admitted %d", len(f.releases()), unused, total, admitted)
		}
	})
}

// A lease whose reply arrives after its deadline is never spent from, and is
// given back whole. (Allow then asks for a central decision of its own,
// which may admit it: not from a lease.)
func TestLeaseDeadOnArrivalIsGivenBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		f.set(func(f *fakeCluster) { f.mu.replyDelay = 3 * time.Second })
		var leased atomic.Int64
		c := f.dial(t, client.WithRequestTimeout(5*time.Second), client.WithTrace(&client.Trace{
			Admit: func(info client.AdmitInfo) {
				if info.Source == client.AdmitLeased {
					leased.Add(info.N)
				}
			}}))
		l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: 1000, Per: time.Second, MaxLease: 2 * time.Second}))
		l.Allow()
		if n := leased.Load(); n != 0 {
			t.Fatalf("%d tokens admitted from leases that arrived expired", n)
		}
		byLease := map[uint64]int64{}
		f.mu.Lock()
		for _, r := range f.mu.results {
			if resp, ok := r.resp.(*pb.AcquireResponse); ok && resp.GetLeaseId() != 0 {
				byLease[resp.GetLeaseId()] = resp.GetItems()[0].GetGranted()
			}
		}
		f.mu.Unlock()
		rels := f.releases()
		if len(rels) == 0 || len(rels) != len(byLease) {
			t.Fatalf("releases = %d, want one per lease granted (%d)", len(rels), len(byLease))
		}
		for _, r := range rels {
			if got, want := r.GetUnused()[0], byLease[r.GetLeaseId()]; got != want {
				t.Errorf("lease %d released with %d unused, want all %d", r.GetLeaseId(), got, want)
			}
		}
	})
}
