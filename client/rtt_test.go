package client_test

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
)

// TestRetriedAcquireIsNoRoundTripSample: an Acquire retried across an
// election of 1 s counts in the Limiter's round-trip average as its last
// attempt's round trip. Before, it counted from the first send: one sample
// of 1 s put the average at ~0.4 s, and the Limiter renewed its leases
// that much earlier for many leases after (e2e
// TestBudgetRaftEntriesPer1000 saw twice the Raft entries after an
// election).
func TestRetriedAcquireIsNoRoundTripSample(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 2)
		f.set(func(f *fakeCluster) {
			f.mu.delay, f.mu.replyDelay = 4*time.Millisecond, time.Millisecond
			f.mu.leaderAddr = true
		})
		c := f.dial(t)
		l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: 200, Per: time.Second}))
		done := f.election(time.Second, time.Second)
		var worst time.Duration
		for range 5000 {
			l.Allow()
			worst = max(worst, client.RoundTripForTest(l))
			time.Sleep(time.Millisecond)
		}
		<-done
		attempts := map[uint64]int{}
		retried := false
		for _, a := range f.acquires() {
			attempts[a.req.GetSeq()]++
			retried = retried || attempts[a.req.GetSeq()] > 1
		}
		if !retried {
			t.Fatal("no Acquire was retried across the election: the test does not exercise a retry")
		}
		t.Logf("largest round-trip average over the run: %v", worst)
		if worst > 50*time.Millisecond {
			t.Errorf("round-trip average reached %v with round trips of ~5 ms: a retried Acquire's time since its first send was taken as a round trip", worst)
		}
	})
}
