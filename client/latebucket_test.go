package client_test

import (
	"context"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
)

// TestTokenBucketCentralDecisionAnsweredLate is the regression test of a
// token bucket's central grant spent late (fsm/DESIGN.md, "A token
// bucket's central grant spent late"). The bound B + r·(Δ+Λ) counts every
// token as spent at most Λ (the key's MaxLease) after the log time that
// granted it; an SDK that admits a central grant whenever its answer
// arrives spends it later than that after a slow answer, or one the dedup
// table remembered for a retry. Two Clients on a bucket of 10 per second,
// burst 10, MaxLease 200ms: A asks for 10 once the bucket is full and its
// answer comes late; B asks for 10 once the bucket has refilled and is
// answered at once. Admissions are counted by (fake) real time in every
// window [a, a+Δ] against B + r·(Δ+Λ), Δ stretched by ρ as the chaos
// checker does. Before the fix A's late answer was admitted next to B's:
// 20 within 40ms, where the bound allows 12.4.
func TestTokenBucketCentralDecisionAnsweredLate(t *testing.T) {
	const (
		rate, burst = 10, 10
		per         = time.Second
		maxLease    = 200 * time.Millisecond
	)
	runLateCases(t, []lateCase{
		{name: "answered within its max lease", reply: 150 * time.Millisecond, bAt: 1100 * time.Millisecond, wantA: true},
		{name: "answered past its max lease", reply: 1050 * time.Millisecond, bAt: 1010 * time.Millisecond},
		{name: "remembered for a retry", lose: 500 * time.Millisecond, bAt: 1060 * time.Millisecond},
	}, func(t *testing.T, f *fakeCluster, tc lateCase) {
		ca, a, b := centralPair(t, f, "tb", client.Limit{Rate: rate, Per: per, Burst: burst, MaxLease: maxLease})
		time.Sleep(per) // the bucket is full again
		admitted := raceLateAnswer(t, f, ca, a, b, burst, tc)
		checkBucketBound(t, admitted, burst, rate, per, maxLease)
	})
}

// checkBucketBound fails t if admissions (one per token, sorted here) put
// more than burst + rate·(Δ·(1+ρ) + maxLease)/per in some window of length
// Δ, ρ = 1e-3.
func checkBucketBound(t *testing.T, admitted []time.Duration, burst, rate int64, per, maxLease time.Duration) {
	t.Helper()
	slices.Sort(admitted)
	for i, from := range admitted {
		for j := i; j < len(admitted); j++ {
			d := admitted[j] - from
			n := int64(j - i + 1)
			// n·per ≤ burst·per + rate·(d·(1+ρ) + maxLease), in float64:
			// the figures are small.
			allowed := float64(burst) + float64(rate)*(float64(d)*1.001+float64(maxLease))/float64(per)
			if float64(n) > allowed {
				t.Fatalf("%d admitted in [%v, %v], more than B + r·(Δ+Λ) = %.2f (admissions %v)", n, from, admitted[j], allowed, admitted)
			}
		}
	}
}

// TestTokenBucketCentralOldClusterAdmitsAsBefore: a cluster that does not
// answer a token bucket's span (below the command level of SpanBuckets, or
// a build that predates it) answers ttl 0, and the SDK admits the answer
// whenever it arrives, as it did before: it cannot tell how late is too
// late.
func TestTokenBucketCentralOldClusterAdmitsAsBefore(t *testing.T) {
	onOldClusters(t, func(t *testing.T, f *fakeCluster) {
		f.set(func(f *fakeCluster) { f.mu.replyDelay = 1050 * time.Millisecond })
		c := f.dial(t)
		l := c.Limiter("tb", client.Limit{Rate: 10, Per: time.Second, Burst: 10, MaxLease: 200 * time.Millisecond})
		if !l.AllowN(10) {
			t.Error("AllowN(10) answered 1.05s late by an old cluster = false, want true (admitted as before)")
		}
		if got := c.Stats().Denied.LateAnswer; got != 0 {
			t.Errorf("Stats().Denied.LateAnswer = %d, want 0", got)
		}
	})
}

// onOldClusters runs test in a subtest and a bubble of its own on a fake
// cluster of each kind that answers no token bucket's span: one below the
// command level of SpanBuckets, and a build that predates it.
func onOldClusters(t *testing.T, test func(t *testing.T, f *fakeCluster)) {
	for _, old := range []string{"spanless buckets", "old node"} {
		t.Run(old, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 1)
				f.set(func(f *fakeCluster) {
					f.mu.spanlessBuckets = old == "spanless buckets"
					f.mu.oldNode = old == "old node"
				})
				test(t, f)
			})
		})
	}
}

// TestTokenBucketCentralRefusesNothingAtUsualLatencies measures the cost of
// the late-answer rule on token buckets: central decisions answered at a
// steady latency, split between the leader's queue before its stamp and
// the commit and answer after it, on a key of the default MaxLease (2s)
// and on one of 200ms. Only answers later than the key's MaxLease after
// their stamp are refused: none of these but the last, every one of whose
// answers comes 260ms after its send, past its key's 200ms.
func TestTokenBucketCentralRefusesNothingAtUsualLatencies(t *testing.T) {
	for _, tc := range []struct {
		maxLease      time.Duration
		queued, reply time.Duration
		jitter        bool // every 10th answer 3 times slower
		late          bool // every answer is later than maxLease
	}{
		{queued: time.Millisecond, reply: time.Millisecond},
		{queued: 20 * time.Millisecond, reply: 40 * time.Millisecond},
		{queued: 10 * time.Millisecond, reply: 300 * time.Millisecond},
		{queued: 10 * time.Millisecond, reply: 100 * time.Millisecond, jitter: true},
		{maxLease: 200 * time.Millisecond, queued: time.Millisecond, reply: time.Millisecond},
		{maxLease: 200 * time.Millisecond, queued: 20 * time.Millisecond, reply: 40 * time.Millisecond, jitter: true},
		{maxLease: 200 * time.Millisecond, queued: 10 * time.Millisecond, reply: 250 * time.Millisecond, late: true},
	} {
		synctest.Test(t, func(t *testing.T) {
			f := newFake(t, 1)
			f.set(func(f *fakeCluster) { f.mu.reportHeld, f.mu.delay, f.mu.replyDelay = true, tc.queued, tc.reply })
			c := f.dial(t)
			l := c.Limiter("tb", client.Limit{Rate: 10, Per: time.Second, Burst: 10, MaxLease: tc.maxLease})
			allowEvery50ms(f, l, 200, tc.reply, tc.jitter)
			st := c.Stats()
			t.Logf("max lease %v, queued %v, reply %v, jitter %v: %d admitted, %d refused late, %d denied by the cluster",
				tc.maxLease, tc.queued, tc.reply, tc.jitter, st.Admitted.Central, st.Denied.LateAnswer, st.Denied.Cluster)
			if tc.late {
				if st.Admitted.Central != 0 || st.Denied.LateAnswer != 200 {
					t.Errorf("max lease %v, queued %v, reply %v: %d admitted, %d refused late; want every one refused",
						tc.maxLease, tc.queued, tc.reply, st.Admitted.Central, st.Denied.LateAnswer)
				}
				return
			}
			if st.Admitted.Central == 0 {
				t.Errorf("max lease %v, queued %v, reply %v: nothing admitted centrally", tc.maxLease, tc.queued, tc.reply)
			}
			if st.Denied.LateAnswer != 0 {
				t.Errorf("max lease %v, queued %v, reply %v: %d refused late, want 0", tc.maxLease, tc.queued, tc.reply, st.Denied.LateAnswer)
			}
		})
	}
}

// TestWaitOnAKeyAnsweredTooLateBacksOff: on a token bucket whose MaxLease
// is shorter than its answers take, every central grant is refused as late
// (spending it would be outside the bound), and each had taken tokens from
// the key. Wait asked again at once, so it spent the key's tokens as fast
// as the cluster answered (25 Acquires in 500ms with 20ms answers), and
// counted none of its refusals in Stats.Denied.LateAnswer. It now backs off
// as after a failure, and counts each refusal.
func TestWaitOnAKeyAnsweredTooLateBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		l := c.Limiter("short", client.Limit{Rate: 1000, Per: time.Second, Burst: 1000, MaxLease: 10 * time.Millisecond})
		if l.State() != client.StateCentral {
			t.Fatalf("State = %v, want %v", l.State(), client.StateCentral)
		}
		f.set(func(f *fakeCluster) { f.mu.replyDelay = 20 * time.Millisecond })
		before := len(f.acquires())
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		defer cancel()
		if err := l.Wait(ctx); err == nil {
			t.Fatal("Wait = nil: a grant answered after the key's MaxLease was spent")
		}
		checkLateAnswersBackedOff(t, c, "Wait", len(f.acquires())-before)
	})
}

// checkLateAnswersBackedOff fails t unless Client c counted in
// Stats.Denied.LateAnswer each of the sent Acquires that caller made in
// 500ms, every one answered too late to spend (the one in flight when
// caller gave up, if any, no one saw), and spaced them by a backoff.
func checkLateAnswersBackedOff(t *testing.T, c *client.Client, caller string, sent int) {
	t.Helper()
	if late := c.Stats().Denied.LateAnswer; late == 0 || late+1 < uint64(sent) || late > uint64(sent) {
		t.Errorf("Stats().Denied.LateAnswer = %d after %d Acquires answered late; want one each (the last may be unseen)", late, sent)
	}
	// Full jitter from 10ms doubling to 1s: about 7 tries in 500ms on
	// average, 25 without a backoff.
	if sent > 15 {
		t.Errorf("%s sent %d Acquires in 500ms, each answered too late to spend; want a backoff between them", caller, sent)
	}
}
