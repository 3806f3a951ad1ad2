package client_test

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
)

// perNode counts the Acquires each node received.
func perNode(f *fakeCluster) []int {
	n := make([]int, len(f.nodes))
	for _, a := range f.acquires() {
		n[a.node]++
	}
	return n
}

// Writes go to the leader; a NotLeader answer sends them, at once, to the
// endpoint whose Status names the leader's node id.
func TestFollowsNotLeader(t *testing.T) {
	t.Run("leader moves", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFake(t, 3)
			f.set(func(f *fakeCluster) { f.mu.leader = 2 })
			c := f.dial(t) // learns ids and the leader from Status
			l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: 10, Per: time.Second}))
			if !l.Allow() {
				t.Fatal("Allow = false, want true")
			}
			if got := perNode(f); got[0]+got[1] != 0 || got[2] != 1 {
				t.Fatalf("acquires per node = %v, want all at the leader n3", got)
			}
			f.set(func(f *fakeCluster) { f.mu.leader = 1 })
			time.Sleep(3 * time.Second) // the lease expires
			t0 := time.Now()
			if !l.Allow() {
				t.Fatal("Allow after the leader moved = false, want true")
			}
			if d := time.Since(t0); d != 0 {
				t.Errorf("following the leader took %v, want 0 (no backoff for a known leader)", d)
			}
			if got := perNode(f); got[1] != 1 || got[2] != 2 {
				t.Errorf("acquires per node = %v, want [0 1 2]", got)
			}
		})
	})
	t.Run("straight to the leader's address, no Status needed", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFake(t, 3)
			// Status fails throughout: only the address in NotLeader can
			// lead the client to n3 at once.
			f.set(func(f *fakeCluster) { f.mu.leader, f.mu.statusDown, f.mu.leaderAddr = 2, true, true })
			c := f.dial(t)
			l := c.Limiter("k", client.Limit{Rate: 10, Per: time.Second})
			t0 := time.Now()
			if !l.Allow() {
				t.Fatal("Allow = false, want true")
			}
			if got := perNode(f); got[0] != 1 || got[1] != 0 || got[2] != 1 {
				t.Errorf("acquires per node = %v, want [1 0 1]: n1, then straight to the leader's address", got)
			}
			if d := time.Since(t0); d != 0 {
				t.Errorf("following the address took %v, want 0 (no backoff, no Status)", d)
			}
		})
	})
	t.Run("ids unknown at dial", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFake(t, 3)
			f.set(func(f *fakeCluster) { f.mu.leader, f.mu.statusDown = 2, true })
			c := f.dial(t)
			f.set(func(f *fakeCluster) { f.mu.statusDown = false })
			l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: 10, Per: time.Second}))
			if !l.Allow() {
				t.Fatal("Allow = false, want true")
			}
			if got := perNode(f); got[0] != 1 || got[1] != 0 || got[2] != 1 {
				t.Errorf("acquires per node = %v, want [1 0 1]: n1, then straight to the leader n3", got)
			}
		})
	})
	t.Run("no leader yet", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFake(t, 2)
			f.set(func(f *fakeCluster) { f.mu.leader = -1 })
			c := f.dial(t)
			l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: 10, Per: time.Second}))
			go func() {
				time.Sleep(300 * time.Millisecond)
				f.set(func(f *fakeCluster) { f.mu.leader = 1 })
			}()
			t0 := time.Now()
			if err := l.Wait(t.Context()); err != nil {
				t.Fatalf("Wait = %v, want nil once a leader is elected", err)
			}
			if d := time.Since(t0); d < 300*time.Millisecond {
				t.Errorf("Wait returned after %v, before there was a leader", d)
			}
			acq := f.acquires()
			if last := acq[len(acq)-1]; last.node != 1 || last.at < 300*time.Millisecond {
				t.Errorf("last acquire at node %d after %v; want n2 (index 1) once elected", last.node, last.at)
			}
			if got := len(f.granted()); got != 1 {
				t.Errorf("grants = %d, want 1", got)
			}
		})
	})
}

// A request whose outcome is unknown (applied, but the answer was lost) is
// retried with the same client_id and seq, and the cluster's first answer is
// used; the lease still counts from the first send.
func TestRetryAfterUnknownOutcomeReusesSeq(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		f.set(func(f *fakeCluster) { f.mu.failApplied = 2 })
		c := f.dial(t)
		l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: 1000, Per: time.Second}))
		t0 := time.Now()
		if !l.Allow() {
			t.Fatal("Allow = false, want true")
		}
		acq := f.acquires()
		if len(acq) != 3 {
			t.Fatalf("acquires = %d, want 3 (two lost answers, one retry that gets the first)", len(acq))
		}
		for _, a := range acq {
			if a.req.GetSeq() != acq[0].req.GetSeq() || string(a.req.GetClientId()) != string(acq[0].req.GetClientId()) {
				t.Errorf("attempt with seq %d, want every attempt with seq %d", a.req.GetSeq(), acq[0].req.GetSeq())
			}
			if a.req.GetAckedBelow() > a.req.GetSeq() {
				t.Errorf("acked_below %d > seq %d", a.req.GetAckedBelow(), a.req.GetSeq())
			}
		}
		if got := len(f.granted()); got != 1 {
			t.Errorf("grants applied = %d, want 1", got)
		}
		if acq[2].at == 0 {
			t.Fatal("the retries took no time; want a backoff")
		}
		f.set(func(f *fakeCluster) { f.mu.down = true })
		time.Sleep(validityOf(2*time.Second) - time.Since(t0))
		if l.Allow() {
			t.Error("Allow at first send + validity = true; the lease must count from the first send, not the retry")
		}
	})
}

// Sequence numbers grow, and acked_below tells the cluster which answers it
// may forget.
func TestSeqAndAckedBelow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		l := c.Limiter("tiny", client.Limit{Rate: 1, Per: time.Second})
		for range 3 {
			l.Allow()
			time.Sleep(time.Second)
		}
		acq := f.acquires()
		for i, a := range acq {
			if want := uint64(i + 1); a.req.GetSeq() != want {
				t.Errorf("acquire %d: seq %d, want %d", i, a.req.GetSeq(), want)
			}
			if a.req.GetAckedBelow() != a.req.GetSeq() {
				t.Errorf("acquire %d: acked_below %d, want %d (nothing else in flight)", i, a.req.GetAckedBelow(), a.req.GetSeq())
			}
		}
	})
}

// TestPausedLeaderIsLeftBehind: a leader that stops answering (SIGSTOP) while
// a new one is elected costs the client one request timeout, not the pause.
// (In a synctest bubble the request's and the attempt's deadlines fire at the
// same instant in either order, so the old bug does not always show here; the
// deterministic regression is TestSilentLeaderIsNotBelievedAfterTimeout.)
func TestPausedLeaderIsLeftBehind(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 3)
		c := f.dial(t, client.WithRequestTimeout(2*time.Second))
		l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: 10, Per: time.Second}))
		if !l.Allow() {
			t.Fatal("Allow = false, want true")
		}
		// n1 stops answering; n2 is elected.
		f.set(func(f *fakeCluster) { f.mu.paused, f.mu.leader = 1, 1 })
		time.Sleep(3 * time.Second) // the lease expires
		t0 := time.Now()
		if err := l.Wait(t.Context()); err != nil {
			t.Fatalf("Wait with a paused old leader: %v", err)
		}
		if d := time.Since(t0); d >= 3*time.Second {
			t.Errorf("Wait took %v: requests went back to the paused leader after one timed out", d)
		}
		if got := perNode(f); got[1] == 0 {
			t.Errorf("acquires per node = %v, want some at the new leader n2", got)
		}
	})
}
