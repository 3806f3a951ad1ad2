package client_test

import (
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
)

// TestWindowCentralDecisionAnsweredLate is the regression test of the
// late central answer (fsm/DESIGN.md, "Sliding windows": a central
// decision answered late). A central decision on a sliding window is
// counted by the cluster over a short span from its stamp; an SDK that
// admits it whenever the answer arrives spends it outside that span, next
// to grants the window allowed because the first had slid out of it. Two
// Clients on one window of 10 per second: A asks for 10 at 0 and its
// answer comes late (a slow reply, or lost and remembered by the dedup
// table for a retry); B asks for 10 once the fake's window has room again
// and is answered at once. A first decides one token, answered at once, so
// that it knows its round trip and asks for its usual span (25ms). Admissions are counted by (fake) real time in
// every window shorter than W/(1+ρ), as the chaos checker counts them:
// never more than 10. Before the fix A's late answer was admitted and
// 20 fell in one window.
func TestWindowCentralDecisionAnsweredLate(t *testing.T) {
	const limit, window = 10, time.Second
	runLateCases(t, []lateCase{
		{name: "answered in time", reply: 2 * time.Millisecond, bAt: 1100 * time.Millisecond, wantA: true},
		{name: "answered past its bucket", reply: 60 * time.Millisecond, bAt: 1000 * time.Millisecond},
		{name: "answered past a window", reply: 1050 * time.Millisecond, bAt: 1000 * time.Millisecond},
		{name: "remembered for a retry", lose: 500 * time.Millisecond, bAt: 1060 * time.Millisecond},
	}, func(t *testing.T, f *fakeCluster, tc lateCase) {
		ca, a, b := centralPair(t, f, "w", client.Limit{Rate: limit, Per: window, Algorithm: client.SlidingWindow})
		// A window later, with the fake's bucket full again.
		time.Sleep(window)
		admitted := raceLateAnswer(t, f, ca, a, b, limit, tc)
		if a := f.acquires()[1].req; a.GetTtlNs() != 0 || a.GetSpanNs() != int64(25*time.Millisecond) {
			t.Errorf("A's Acquire asked ttl %v, span %v; want a central decision (ttl 0) counted over 25ms",
				time.Duration(a.GetTtlNs()), time.Duration(a.GetSpanNs()))
		}
		slices.Sort(admitted)
		short := window * 1000 / 1001 // W/(1+ρ), ρ = 1e-3
		for i, at := range admitted {
			j, _ := slices.BinarySearch(admitted, at+short)
			if n := j - i; n > limit {
				t.Fatalf("%d admitted in [%v, %v), limit %d per %v (admissions %v)", n, at, at+short, limit, window, admitted)
			}
		}
	})
}

// lateCase is a case of the late central answer tests: Client A asks for
// a batch and its answer is delayed by reply after it applied, or, with
// lose, the answer is lost and every node is down until then, so that a
// retry is answered from the dedup table; Client B asks for a batch at bAt
// and is answered at once. wantA: A's answer is in time, and admitted.
type lateCase struct {
	name        string
	reply, lose time.Duration
	bAt         time.Duration
	wantA       bool
}

// runLateCases runs play for each case in a subtest and a bubble of its
// own, on a fake that reports the time it held each Acquire before and
// after its stamp, as a leader does, and answers 1ms after applying
// (until the race sets its delays).
func runLateCases(t *testing.T, cases []lateCase, play func(t *testing.T, f *fakeCluster, tc lateCase)) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 1)
				f.set(func(f *fakeCluster) { f.mu.reportHeld, f.mu.replyDelay = true, time.Millisecond })
				play(t, f, tc)
			})
		})
	}
}

// centralPair dials Clients A and B to f, each with a Limiter of key on
// lim, and checks that A's is central and admits its first token, answered
// at once (A learns its round trip). It returns A's Client, A's Limiter and
// B's.
func centralPair(t *testing.T, f *fakeCluster, key string, lim client.Limit) (ca *client.Client, a, b *client.Limiter) {
	t.Helper()
	ca = f.dial(t)
	a = ca.Limiter(key, lim)
	b = f.dial(t).Limiter(key, lim)
	if a.State() != client.StateCentral {
		t.Fatalf("State = %v, want %v", a.State(), client.StateCentral)
	}
	if !a.Allow() {
		t.Fatal("A's first Allow = false, want true")
	}
	return ca, a, b
}

// raceLateAnswer plays tc from now: A (of Client ca) and B each ask for n
// tokens, as tc says. It checks both outcomes, A's LateAnswer count and,
// with lose, that a retry was answered from the dedup table, and returns
// the admissions, one per token, as times from its start.
func raceLateAnswer(t *testing.T, f *fakeCluster, ca *client.Client, a, b *client.Limiter, n int64, tc lateCase) []time.Duration {
	t.Helper()
	allowN := func(l *client.Limiter, r *lateRace) bool {
		ok := l.AllowN(n)
		if ok {
			r.admit(n)
		}
		return ok
	}
	return playLateCase(t, f, ca, tc,
		func(r *lateRace) {
			if ok := allowN(a, r); ok != tc.wantA {
				t.Errorf("A's AllowN(%d) = %v, want %v", n, ok, tc.wantA)
			}
		},
		func(r *lateRace) {
			if !allowN(b, r) {
				t.Errorf("B's AllowN(%d) at %v = false, want true", n, r.elapsed())
			}
		})
}

// lateRace is one play of a lateCase: the admissions of both callers, one
// per token, as times from its start.
type lateRace struct {
	start    time.Time
	mu       sync.Mutex // A and B admit from goroutines of their own
	admitted []time.Duration
}

// admit records n tokens admitted now.
func (r *lateRace) admit(n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for range n {
		r.admitted = append(r.admitted, r.elapsed())
	}
}

func (r *lateRace) elapsed() time.Duration { return time.Since(r.start) }

// playLateCase plays tc from now between two callers on one key: askA (a
// caller of Client ca) at once, on a goroutine of its own, and askB at
// tc.bAt, answered at once. Each asks, records what it admitted in the
// race and checks its own outcome. playLateCase checks A's LateAnswer
// count and, with lose, that a retry was answered from the dedup table,
// and returns the admissions once both have returned.
func playLateCase(t *testing.T, f *fakeCluster, ca *client.Client, tc lateCase, askA, askB func(*lateRace)) []time.Duration {
	t.Helper()
	f.set(func(f *fakeCluster) { f.mu.replyDelay = tc.reply })
	if tc.lose > 0 {
		f.set(func(f *fakeCluster) { f.mu.failApplied = 1 })
	}
	r := &lateRace{start: time.Now()}
	var wg sync.WaitGroup
	wg.Go(func() { askA(r) })
	synctest.Wait()
	if tc.lose > 0 {
		// A's first attempt applied and lost its answer: the retries
		// find no node until lose.
		f.set(func(f *fakeCluster) { f.mu.down = true })
		time.Sleep(tc.lose)
		f.set(func(f *fakeCluster) { f.mu.down = false })
	}
	time.Sleep(tc.bAt - r.elapsed())
	f.set(func(f *fakeCluster) { f.mu.replyDelay = 0 })
	askB(r)
	wg.Wait()
	wantLate := uint64(1)
	if tc.wantA {
		wantLate = 0
	}
	if got := ca.Stats().Denied.LateAnswer; got != wantLate {
		t.Errorf("Stats().Denied.LateAnswer = %d, want %d", got, wantLate)
	}
	var retries int
	f.set(func(f *fakeCluster) { retries = len(f.mu.retries) })
	if tc.lose > 0 && retries == 0 {
		t.Error("no Acquire was answered from the dedup table")
	}
	return r.admitted
}

// TestWindowCentralSpanRefusesNothingAtUsualLatencies measures the cost of
// the late-answer rule: central decisions on a sliding window answered at
// a steady latency, split between the leader's queue before its stamp
// (reported, narrowing the bracket) and the commit and answer after it.
// The span follows the answers' lag (twice the slowest recent one,
// decayed; at most W/4), so only answers slower than a quarter of the
// window, or more than twice as slow as the ones before, are refused. It
// logs each latency's refusals and checks that steady answers of up to
// 100ms are never refused.
func TestWindowCentralSpanRefusesNothingAtUsualLatencies(t *testing.T) {
	for _, tc := range []struct {
		queued, reply time.Duration
		jitter        bool // every 10th answer 3 times slower
	}{
		{queued: time.Millisecond, reply: time.Millisecond},
		{queued: 5 * time.Millisecond, reply: 10 * time.Millisecond},
		{queued: 20 * time.Millisecond, reply: 40 * time.Millisecond},
		{queued: 10 * time.Millisecond, reply: 100 * time.Millisecond},
		{queued: 10 * time.Millisecond, reply: 40 * time.Millisecond, jitter: true},
		{queued: 10 * time.Millisecond, reply: 200 * time.Millisecond},
		{queued: 10 * time.Millisecond, reply: 300 * time.Millisecond},
	} {
		synctest.Test(t, func(t *testing.T) {
			f := newFake(t, 1)
			f.set(func(f *fakeCluster) { f.mu.reportHeld, f.mu.delay, f.mu.replyDelay = true, tc.queued, tc.reply })
			c := f.dial(t)
			l := c.Limiter("w", client.Limit{Rate: 10, Per: time.Second, Algorithm: client.SlidingWindow})
			const calls = 200
			allowEvery50ms(f, l, calls, tc.reply, tc.jitter)
			st := c.Stats()
			t.Logf("queued %v, reply %v, jitter %v: %d calls, %d admitted, %d refused late, %d denied by the cluster",
				tc.queued, tc.reply, tc.jitter, calls, st.Admitted.Central, st.Denied.LateAnswer, st.Denied.Cluster)
			if tc.reply <= 100*time.Millisecond && !tc.jitter && st.Denied.LateAnswer != 0 {
				t.Errorf("queued %v, reply %v: %d refused late, want 0", tc.queued, tc.reply, st.Denied.LateAnswer)
			}
		})
	}
}

// allowEvery50ms calls l.Allow calls times, 50ms apart, with answers
// delayed by reply; with jitter every tenth three times as long.
func allowEvery50ms(f *fakeCluster, l *client.Limiter, calls int, reply time.Duration, jitter bool) {
	for i := range calls {
		if jitter {
			d := reply
			if i%10 == 9 {
				d *= 3
			}
			f.set(func(f *fakeCluster) { f.mu.replyDelay = d })
		}
		l.Allow()
		time.Sleep(50 * time.Millisecond)
	}
}
