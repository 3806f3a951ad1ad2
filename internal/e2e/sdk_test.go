package e2e

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leasehold/leasehold/client"
)

// admission is one Allow that returned true: it happened somewhere in
// [invoke, ret], on this process's monotonic clock.
type admission struct {
	invoke, ret time.Duration
}

// hammer calls Allow every pace until stop closes or limit calls were made,
// recording admissions against start.
func hammer(l *client.Limiter, start time.Time, pace time.Duration, limit int, stop <-chan struct{}) []admission {
	var out []admission
	tick := time.NewTicker(pace)
	defer tick.Stop()
	for range limit {
		select {
		case <-stop:
			return out
		case <-tick.C:
		}
		inv := time.Since(start)
		if l.Allow() {
			out = append(out, admission{inv, time.Since(start)})
		}
	}
	return out
}

// dialClients dials n SDK clients to c, each with opts and a client
// certificate.
func dialClients(t testing.TB, c *procCluster, n int, opts ...client.Option) []*client.Client {
	t.Helper()
	var clients []*client.Client
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cl, err := client.Dial(ctx, c.Endpoints(), append([]client.Option{c.sdkTLS("e2e")}, opts...)...)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, cl)
	}
	return clients
}

// closeClients closes every client, reporting the errors.
func closeClients(t testing.TB, clients []*client.Client) {
	t.Helper()
	for _, cl := range clients {
		if err := cl.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}
}

// hammerAll runs hammer on each of ls (a Limiter may be listed more than
// once: one goroutine per entry) for run, and returns every admission and
// how long the goroutines ran.
func hammerAll(ls []*client.Limiter, pace, run time.Duration) ([]admission, time.Duration) {
	start := time.Now()
	stop := make(chan struct{})
	time.AfterFunc(run, func() { close(stop) })
	var (
		mu  sync.Mutex
		all []admission
		wg  sync.WaitGroup
	)
	for _, l := range ls {
		wg.Go(func() {
			got := hammer(l, start, pace, int(run/pace)+1000, stop)
			mu.Lock()
			all = append(all, got...)
			mu.Unlock()
		})
	}
	wg.Wait()
	return all, time.Since(start)
}

// envelopeExcess checks the token-bucket envelope of DESIGN.md invariant 7 over
// every window [a.invoke, b.ret] between two admissions: the admissions whose
// whole [invoke, ret] lies inside must number at most B + r·(Δ + Λ). It returns
// the largest excess found (<= 0 means the envelope held) and the window.
func envelopeExcess(adm []admission, burst, ratePerSec float64, lease time.Duration) (excess float64, from, to time.Duration) {
	byInvoke := slices.Clone(adm)
	slices.SortFunc(byInvoke, func(x, y admission) int { return int(x.invoke - y.invoke) })
	byRet := slices.Clone(adm)
	slices.SortFunc(byRet, func(x, y admission) int { return int(x.ret - y.ret) })
	excess = -burst
	for _, a := range byInvoke {
		n := 0
		for _, b := range byRet {
			if b.ret < a.invoke {
				continue
			}
			if b.invoke >= a.invoke {
				n++
			}
			allowed := burst + ratePerSec*(b.ret-a.invoke+lease).Seconds()
			if e := float64(n) - allowed; e > excess {
				excess, from, to = e, a.invoke, b.ret
			}
		}
	}
	return excess, from, to
}

// TestThreeClientsWithinBound: three SDK clients, each demanding far above the
// limit (2000/s each against 100/s), hammer one key for 10 s. They admit no
// more than the stated envelope B + r·(Δ + Λ) in any window, and at least 90%
// of what the bucket itself can give in the run, B + r·Δ.
func TestThreeClientsWithinBound(t *testing.T) {
	c := startCluster(t, 3)
	const (
		rate  = 100
		burst = 100
		run   = 10 * time.Second
		lease = 2 * time.Second // the key's MaxLease (server default)
	)
	lim := client.Limit{Rate: rate, Per: time.Second, Burst: burst}
	clients := dialClients(t, c, 3)
	var ls []*client.Limiter
	for _, cl := range clients {
		ls = append(ls, cl.Limiter("hammer", lim))
	}
	term0 := c.leaderTerm(10 * time.Second)
	all, elapsed := hammerAll(ls, 500*time.Microsecond, run)
	closeClients(t, clients)
	term1 := c.leaderTerm(10 * time.Second)

	excess, from, to := envelopeExcess(all, burst, rate, lease)
	if excess > 0 {
		t.Errorf("over-admitted: window [%v, %v] exceeds B + r(Δ+Λ) by %.1f tokens", from, to, excess)
	}
	bucketMax := burst + rate*elapsed.Seconds()
	eff := float64(len(all)) / bucketMax
	t.Logf("admitted %d in %v; bucket allows %.0f (B + rΔ), envelope %.0f (B + r(Δ+Λ)); efficiency %.3f; worst window excess %.1f",
		len(all), elapsed.Round(time.Millisecond), bucketMax, bucketMax+rate*lease.Seconds(), eff, excess)
	// As in TestConcurrentCentralCallersWithinBound: an election in the
	// middle of the run (a starved machine: a leader steps down after
	// 300ms without its followers' answers, seen beside the jepsen tests)
	// leaves the clients without new leases for seconds. The bound holds
	// through it (checked above); the efficiency is judged only on a run
	// with one leader throughout.
	switch {
	case term1 != term0:
		t.Logf("an election during the run (term %d -> %d): efficiency %.3f not judged", term0, term1, eff)
	case eff < 0.90:
		t.Errorf("efficiency %.3f: admitted %d of the %.0f the bucket allows; want at least 90%%", eff, len(all), bucketMax)
	}
}

// TestFailoverKeepsAdmitting kills the leader while an SDK client admits on a
// live lease: the client keeps admitting during the election, and again after
// a new leader is up.
func TestFailoverKeepsAdmitting(t *testing.T) {
	c := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := client.Dial(ctx, c.Endpoints(), c.sdkTLS("e2e"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	l := cl.Limiter("failover", client.Limit{Rate: 1000, Per: time.Second, Burst: 1000})
	if err := l.Wait(ctx); err != nil {
		t.Fatalf("first token: %v", err)
	}

	start := time.Now()
	stop := make(chan struct{})
	done := make(chan []admission)
	go func() { done <- hammer(l, start, time.Millisecond, 60_000, stop) }()

	time.Sleep(300 * time.Millisecond) // let the client run on its lease for a while (load, not synchronisation)
	old := c.waitLeader(10 * time.Second)
	killedAt := time.Since(start)
	c.kill(old)
	next := c.waitLeader(30 * time.Second)
	electedAt := time.Since(start)
	// Keep going until well past the new leader, so new leases are needed.
	deadline := time.Now().Add(30 * time.Second)
	for time.Since(start) < electedAt+3*time.Second && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	adm := <-done

	var during, after int
	for _, a := range adm {
		switch {
		case a.invoke >= killedAt && a.ret <= electedAt:
			during++
		case a.invoke >= electedAt+2*time.Second:
			after++ // beyond any lease granted by the old leader (TTL 2s)
		}
	}
	t.Logf("leader %s killed at %v, %s elected at %v; admitted %d during the election, %d after the old leases ran out",
		old.ID(), killedAt.Round(time.Millisecond), next.ID(), electedAt.Round(time.Millisecond), during, after)
	if during == 0 {
		t.Errorf("no admission during the election: live leases should keep the client admitting")
	}
	if after == 0 {
		t.Errorf("no admission from the new leader's leases")
	}
}

// TestEnvelopeCheckerCatchesOverAdmission shows envelopeExcess can fail:
// histories one token over the envelope are caught, histories at it pass.
func TestEnvelopeCheckerCatchesOverAdmission(t *testing.T) {
	at := func(n int, when time.Duration) []admission {
		var out []admission
		for range n {
			out = append(out, admission{when, when})
		}
		return out
	}
	const burst, rate, lease = 10, 10, time.Second // envelope at one instant: 10 + 10·1 = 20
	tests := []struct {
		name string
		adm  []admission
		over bool
	}{
		{"at the envelope in one instant", at(20, time.Second), false},
		{"one over in one instant", at(21, time.Second), true},
		{"a bucket reset: full burst twice in 100ms", append(at(20, time.Second), at(20, time.Second+100*time.Millisecond)...), true},
		{"steady at the rate", func() []admission {
			var out []admission
			for i := range 100 {
				out = append(out, at(1, time.Duration(i)*100*time.Millisecond)...)
			}
			return out
		}(), false},
		// 20 at 1s is at the envelope; a 21st whose [invoke, ret] spans a
		// second only fits in windows a second wide, which allow 30.
		{"a long interval counts only in windows that hold all of it",
			append(at(20, time.Second), admission{time.Second / 2, 3 * time.Second / 2}), false},
		{"a short interval next to a full instant is over",
			append(at(20, time.Second), admission{time.Second - time.Millisecond, time.Second + time.Millisecond}), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			excess, _, _ := envelopeExcess(tt.adm, burst, rate, lease)
			if got := excess > 1e-9; got != tt.over {
				t.Errorf("excess %.3f, over = %v; want over = %v", excess, got, tt.over)
			}
		})
	}
}

// TestConcurrentCentralCallersWithinBound: three SDK clients, each with 16
// goroutines, hammer a strict key decided centrally (its reserve over a lease
// is its whole burst, so the cluster grants no leases). Their concurrent
// requests share Acquires: fewer Acquires grant than tokens are admitted,
// one per request (without sharing they would be equal). Together they
// admit no more than B + r·Δ in any window (a central admission has no lease
// term) and at least 90% of B + r·Δ.
func TestConcurrentCentralCallersWithinBound(t *testing.T) {
	c := startCluster(t, 3)
	const (
		rate    = 100
		burst   = 100
		run     = 5 * time.Second
		callers = 16
		pace    = 2 * time.Millisecond
	)
	lim := client.Limit{Rate: rate, Per: time.Second, Burst: burst, Strict: true}
	var granting, central atomic.Int64 // Acquires that granted; admissions traced
	trace := &client.Trace{
		AcquireDone: func(info client.AcquireDoneInfo) {
			if info.Err == nil && info.Allowed {
				granting.Add(1)
			}
		},
		Admit: func(client.AdmitInfo) { central.Add(1) },
	}
	clients := dialClients(t, c, 3, client.WithTrace(trace))
	var ls []*client.Limiter
	for _, cl := range clients {
		l := cl.Limiter("central", lim)
		if s := l.State(); s != client.StateCentral {
			t.Fatalf("State = %v, want %v", s, client.StateCentral)
		}
		for range callers {
			ls = append(ls, l)
		}
	}
	term0 := c.leaderTerm(10 * time.Second)
	all, elapsed := hammerAll(ls, pace, run)
	closeClients(t, clients)
	term1 := c.leaderTerm(10 * time.Second)

	excess, from, to := envelopeExcess(all, burst, rate, 0)
	if excess > 0 {
		t.Errorf("over-admitted: window [%v, %v] exceeds B + rΔ by %.1f tokens", from, to, excess)
	}
	if int64(len(all)) != central.Load() {
		t.Errorf("%d admissions, %d traced as central", len(all), central.Load())
	}
	bucketMax := burst + rate*elapsed.Seconds()
	eff := float64(len(all)) / bucketMax
	t.Logf("admitted %d in %v from %d granting Acquires; bucket allows %.0f; efficiency %.3f; worst window excess %.1f",
		len(all), elapsed.Round(time.Millisecond), granting.Load(), bucketMax, eff, excess)
	// Regression (stop 20, a loaded machine, efficiency 0.35-0.68): an
	// election in the middle of the run stops central decisions for
	// seconds. The bound holds through it (checked above); the efficiency
	// is judged only on a run with one leader throughout.
	switch {
	case term1 != term0:
		t.Logf("an election during the run (term %d -> %d): efficiency %.3f not judged", term0, term1, eff)
	case eff < 0.90:
		t.Errorf("efficiency %.3f: admitted %d of the %.0f the bucket allows; want at least 90%%", eff, len(all), bucketMax)
	}
	if granting.Load() >= int64(len(all)) {
		t.Errorf("%d granting Acquires for %d admissions of one token: concurrent central requests should share Acquires",
			granting.Load(), len(all))
	}
}
