package client_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
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
			checkCentralAcquire(t, i, a, 1, 1)
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
		l := client.LeasingForTest(c.Limiter("strict", client.Limit{Rate: 1000, Per: time.Second, Burst: 5000, Strict: true}))
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

// Central requests that arrive while a central Acquire is in flight wait for
// the next one, which carries them all: count the smallest, want their sum.
// The grant is handed out in arrival order and nothing more: a strict bucket
// of burst 100 admits exactly 100 of 150 concurrent Allows, in three
// Acquires, and the last one's denial is remembered.
func TestConcurrentCentralRequestsShareAnAcquire(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		l := c.Limiter("strict", client.Limit{Rate: 100, Per: time.Second, Strict: true})
		if got := l.State(); got != client.StateCentral {
			t.Fatalf("State = %v, want %v", got, client.StateCentral)
		}
		release := f.holdAcquires()

		const callers = 150
		var admitted atomic.Int64
		var wg sync.WaitGroup
		first := make(chan struct{})
		wg.Go(func() {
			close(first)
			if l.Allow() {
				admitted.Add(1)
			}
		})
		<-first
		synctest.Wait() // the first Allow's Acquire waits in the fake
		if got := f.blocked(); got != 1 {
			t.Fatalf("acquires in flight = %d, want 1", got)
		}
		for range callers - 1 {
			wg.Go(func() {
				if l.Allow() {
					admitted.Add(1)
				}
			})
		}
		synctest.Wait() // the others queue behind it
		if got := f.blocked(); got != 1 {
			t.Fatalf("acquires in flight with %d callers waiting = %d, want 1", callers-1, got)
		}
		release()
		wg.Wait()

		if got := admitted.Load(); got != 100 {
			t.Errorf("admitted %d of %d, want 100 (the burst)", got, callers)
		}
		acq := f.acquires()
		if len(acq) != 3 {
			t.Fatalf("acquires = %d, want 3 (1 alone, then 100 tokens' worth, then the rest)", len(acq))
		}
		for i, want := range []int64{1, 100, 49} {
			checkCentralAcquire(t, i, acq[i], 1, want)
		}
		if l.Allow() {
			t.Error("Allow after the key ran dry = true, want false")
		}
		if got := len(f.acquires()); got != 3 {
			t.Errorf("acquires after a remembered denial = %d, want 3", got)
		}
	})
}

// A request of more tokens than the grant has left is refused, while a later
// smaller one that fits is admitted: what one decision per request, in
// arrival order, at the same log time would do.
func TestCentralGrantGoesInArrivalOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		l := c.Limiter("strict", client.Limit{Rate: 10, Per: time.Second, Strict: true})
		if !l.AllowN(6) { // 4 left
			t.Fatal("AllowN(6) on a full bucket = false")
		}
		release := f.holdAcquires()
		results := make([]bool, 4)
		var wg sync.WaitGroup
		// One in flight (1 token), then 5 (too many), 2, 1 queued.
		for i, n := range []int64{1, 5, 2, 1} {
			wg.Go(func() { results[i] = l.AllowN(n) })
			synctest.Wait()
		}
		release()
		wg.Wait()
		if want := []bool{true, false, true, true}; !slices.Equal(results, want) {
			t.Errorf("AllowN(1, 5, 2, 1) = %v, want %v", results, want)
		}
		if got := len(f.acquires()); got != 3 {
			t.Errorf("acquires = %d, want 3", got)
		}
	})
}

// A central request whose context ends while it waits for the next Acquire
// is withdrawn: it is not sent, and the others are decided without it.
func TestCentralRequestWithdrawnWhenItsContextEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, _, l := newStrictCentral(t)
		release := f.holdAcquires()
		first := blockedCall(func() error { return l.Wait(t.Context()) })
		ctx, cancel := context.WithCancel(t.Context())
		withdrawn := blockedCall(func() error { return l.WaitN(ctx, 7) })
		other := blockedCall(func() error { return l.WaitN(t.Context(), 2) })
		cancel()
		if err := <-withdrawn; !errors.Is(err, context.Canceled) {
			t.Fatalf("WaitN(7) whose context ended = %v, want context.Canceled", err)
		}
		release()
		if err := <-first; err != nil {
			t.Errorf("Wait = %v, want nil", err)
		}
		if err := <-other; err != nil {
			t.Errorf("WaitN(2) = %v, want nil", err)
		}
		acq := f.acquires()
		if len(acq) != 2 {
			t.Fatalf("acquires = %d, want 2", len(acq))
		}
		checkCentralAcquire(t, 1, acq[1], 2, 2) // the withdrawn 7 not sent
	})
}

// newStrictCentral dials a Client to a new fake and makes a Limiter on a
// strict bucket of 100 per second: central from the start (its reserve
// over a lease is over its burst).
func newStrictCentral(t *testing.T) (*fakeCluster, *client.Client, *client.Limiter) {
	t.Helper()
	f := newFake(t, 1)
	c := f.dial(t)
	return f, c, c.Limiter("strict", client.Limit{Rate: 100, Per: time.Second, Strict: true})
}

// blockedCall starts call on a goroutine of its own and returns once it is
// blocked (its Acquire held in the fake, or queued behind one), with a
// channel that will carry its result.
func blockedCall[T any](call func() T) <-chan T {
	result := make(chan T, 1)
	go func() { result <- call() }()
	synctest.Wait()
	return result
}

// Property: concurrent central requests of random sizes on a strict key get
// exactly the admissions of a model that decides the Acquires the SDK sends
// (the first request alone; then the queued ones in arrival order, in
// batches of at most the burst's worth of tokens), each as the cluster does:
// denied whole if the smallest does not fit, else granted min(sum, left)
// and handed out greedily in arrival order. Nothing is admitted beyond the
// burst (the fake's clock does not move, so nothing refills).
func TestCentralBatchesMatchModel(t *testing.T) {
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 7))
		burst := 1 + rng.Int64N(40)
		ns := make([]int64, 2+rng.IntN(30))
		for i := range ns {
			ns[i] = 1 + rng.Int64N(min(burst, 12))
		}
		want := centralModel(burst, ns)
		var got []bool
		synctest.Test(t, func(t *testing.T) {
			got = runCentral(t, burst, ns)
		})
		if !slices.Equal(got, want) {
			t.Fatalf("seed %d: burst %d, requests %v: admitted %v, model %v", seed, burst, ns, got, want)
		}
		var sum int64
		for i, ok := range got {
			if ok {
				sum += ns[i]
			}
		}
		if sum > burst {
			t.Fatalf("seed %d: admitted %d tokens of a burst of %d", seed, sum, burst)
		}
	}
}

// runCentral sends ns[0] alone and, while the fake holds it, queues the rest
// in order; it returns each AllowN's result.
func runCentral(t *testing.T, burst int64, ns []int64) []bool {
	f := newFake(t, 1)
	c := f.dial(t)
	// A strict bucket whose reserve over a 1s lease is over its burst:
	// central from the start. A token every millisecond exactly, so that
	// the bucket's integer arithmetic loses nothing to rounding.
	l := c.Limiter("k", client.Limit{Rate: burst, Per: time.Duration(burst) * time.Millisecond, Burst: burst,
		Strict: true, MaxLease: time.Second})
	if l.State() != client.StateCentral {
		t.Fatalf("State = %v, want central", l.State())
	}
	release := f.holdAcquires()
	got := make([]bool, len(ns))
	var wg sync.WaitGroup
	for i, n := range ns {
		wg.Go(func() { got[i] = l.AllowN(n) })
		synctest.Wait() // in flight (the first) or queued, in order
	}
	release()
	wg.Wait()

	return got
}

// centralModel decides ns as runCentral sends them; see
// TestCentralBatchesMatchModel.
func centralModel(burst int64, ns []int64) []bool {
	out := make([]bool, len(ns))
	left := burst
	decide := func(batch []int) {
		count, sum := ns[batch[0]], int64(0)
		for _, i := range batch {
			count = min(count, ns[i])
			sum += ns[i]
		}
		if count > left {
			return // denied: every request in it is refused
		}
		g := min(sum, left)
		left -= g
		for _, i := range batch {
			if ns[i] <= g {
				g -= ns[i]
				out[i] = true
			}
		}
	}
	decide([]int{0})
	var batch []int
	var tokens int64
	for i := 1; i < len(ns); i++ {
		if len(batch) > 0 && tokens+ns[i] > burst {
			decide(batch)
			batch, tokens = nil, 0
		}
		batch = append(batch, i)
		tokens += ns[i]
	}
	if len(batch) > 0 {
		decide(batch)
	}
	return out
}

// checkCentralAcquire reports acquire i, a, unless it is a central request
// (ttl 0) for count tokens, up to want.
func checkCentralAcquire(t *testing.T, i int, a acquireRecord, count, want int64) {
	t.Helper()
	it := a.req.GetItems()[0]
	if it.GetCount() != count || it.GetWant() != want || a.req.GetTtlNs() != 0 {
		t.Errorf("acquire %d: count %d, want %d, ttl_ns %d; want %d, %d, 0 (central)",
			i, it.GetCount(), it.GetWant(), a.req.GetTtlNs(), count, want)
	}
}

// inFlight counts, through a Trace, the Acquires a Client sends and the
// most in flight at once.
type inFlight struct {
	mu               sync.Mutex
	now, most, total int
}

func (a *inFlight) trace() *client.Trace {
	return &client.Trace{
		AcquireStart: func(client.AcquireStartInfo) {
			a.mu.Lock()
			defer a.mu.Unlock()
			a.now++
			a.total++
			a.most = max(a.most, a.now)
		},
		AcquireDone: func(client.AcquireDoneInfo) {
			a.mu.Lock()
			defer a.mu.Unlock()
			a.now--
		},
	}
}

// holdNext lets the Acquires the fake holds go on and holds those that
// arrive from now on, in one step.
func (f *fakeCluster) holdNext() {
	f.set(func(f *fakeCluster) {
		close(f.mu.hold)
		f.mu.hold = make(chan struct{})
	})
}

// A Wait whose context ends while the Acquire carrying it is in flight
// returns at once. The Acquire goes on, and its grant is handed out to the
// others it carries; the leaver's share is lost (under-admission, never
// over).
func TestCentralWaitLeavesWhileItsAcquireGoesOn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, c, l := newStrictCentral(t)
		release := f.holdAcquires()
		first := blockedCall(l.Allow)
		ctx, cancel := context.WithCancel(t.Context())
		left := blockedCall(func() error { return l.WaitN(ctx, 50) })
		other := blockedCall(func() bool { return l.AllowN(49) })

		f.holdNext()
		if !<-first {
			t.Fatal("first Allow = false, want true")
		}
		synctest.Wait()
		if got := f.blocked(); got != 1 {
			t.Fatalf("acquires in flight = %d, want 1 (WaitN(50) and AllowN(49) together)", got)
		}
		t0 := time.Now()
		cancel()
		if err := <-left; !errors.Is(err, context.Canceled) {
			t.Fatalf("WaitN(50) whose context ended = %v, want context.Canceled", err)
		}
		if d := time.Since(t0); d != 0 {
			t.Errorf("WaitN(50) returned %v after its context ended, want at once", d)
		}
		if got := f.blocked(); got != 1 {
			t.Fatalf("acquires in flight after WaitN(50) left = %d, want 1 (it goes on)", got)
		}
		release()
		if !<-other {
			t.Error("AllowN(49) carried with the leaver = false, want true")
		}

		acq := f.acquires()
		if len(acq) != 2 {
			t.Fatalf("acquires = %d, want 2", len(acq))
		}
		checkCentralAcquire(t, 1, acq[1], 49, 99)
		if got := c.Stats().Admitted.Central; got != 1+49 {
			t.Errorf("tokens admitted centrally = %d, want 50 (the leaver's 50 handed to no one)", got)
		}
	})
}

// Property: callers of every kind on one central key (Allow; Wait with a
// context that never ends; Wait with a context that ends, sometimes while
// its Acquire is in flight) never have two Acquires in flight at once, and
// admit no more tokens than the cluster granted.
func TestCentralCallersOfEveryKindShareOneAcquireInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var acq inFlight
		f := newFake(t, 1)
		f.set(func(f *fakeCluster) { f.mu.delay = time.Millisecond })
		c := f.dial(t, client.WithTrace(acq.trace()))
		l := c.Limiter("strict", client.Limit{Rate: 100, Per: time.Second, Strict: true})
		var wg sync.WaitGroup
		for g := range 24 {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(g), 1))
				for range 20 {
					n := 1 + rng.Int64N(3)
					switch g % 3 {
					case 0:
						l.AllowN(n)
					case 1:
						if err := l.WaitN(context.Background(), n); err != nil {
							t.Errorf("WaitN(Background, %d) = %v", n, err)
						}
					case 2:
						ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.Int64N(3000))*time.Microsecond)
						err := l.WaitN(ctx, n)
						if err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, client.ErrWouldExceedDeadline) {
							t.Errorf("WaitN(%d) with a deadline = %v", n, err)
						}
						cancel()
					}
				}
			})
		}
		wg.Wait()
		synctest.Wait() // an Acquire a leaver left behind has ended
		acq.mu.Lock()
		most, total := acq.most, acq.total
		acq.mu.Unlock()
		if most != 1 {
			t.Errorf("at most %d acquires in flight at once, want 1 (%d acquires)", most, total)
		}
		if admitted, granted := c.Stats().Admitted.Central, f.net("strict"); int64(admitted) > granted {
			t.Errorf("admitted %d tokens centrally, the cluster granted %d", admitted, granted)
		}
	})
}

// BenchmarkAllowCentral is a central Allow per op, one goroutine, on a fake
// cluster that answers at once, over gRPC and called in-process (no network
// code: the SDK's own cost is most of the op): what the SDK spends around
// each central decision, on 1000 keys used in turn and on one key.
func BenchmarkAllowCentral(b *testing.B) {
	for _, direct := range []bool{false, true} {
		for _, keys := range []int{1000, 1} {
			b.Run(fmt.Sprintf("direct=%v/keys=%d", direct, keys), func(b *testing.B) {
				f := newFake(b, 1)
				dial := f.dial
				if direct {
					dial = f.dialDirect
				}
				c := dial(b)
				ls := make([]*client.Limiter, keys)
				for i := range ls {
					ls[i] = c.Limiter(fmt.Sprint("k", i), client.Limit{Rate: 1 << 40, Per: time.Second, Strict: true})
				}
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					if !ls[i%keys].Allow() {
						b.Fatal("Allow = false")
					}
					i++
				}
			})
		}
	}
}
