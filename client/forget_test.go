package client_test

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
)

// churn churns n tenants through c, each a Budget and a Limiter used once,
// perTick tenants every 10ms, and returns the largest map sizes and
// goroutine count seen (after each tick).
func churn(t *testing.T, f *fakeCluster, c *client.Client, n, perTick int) (maxLimiters, maxBudgets, maxGoroutines int) {
	rules := []client.Rule{
		{Counts: client.Requests, Limit: client.Limit{Rate: 100, Per: time.Minute}},
		{Counts: client.Tokens, Limit: client.Limit{Rate: 100_000, Per: time.Minute}},
	}
	for i := range n {
		tenant := fmt.Sprintf("tenant-%d", i)
		r, err := c.Budget(tenant, rules...).TryReserve(client.Cost{Requests: 1, InputTokens: 100, OutputTokens: 100})
		if err != nil {
			t.Fatalf("tenant %d: %v", i, err)
		}
		if err := r.Settle(t.Context(), client.Cost{Requests: 1, InputTokens: 90, OutputTokens: 20}); err != nil {
			t.Fatal(err)
		}
		c.Limiter(tenant+"/api", client.Limit{Rate: 10, Per: time.Second}).Allow()
		if i%perTick == perTick-1 {
			time.Sleep(10 * time.Millisecond)
			l, b := client.SizesForTest(c)
			maxLimiters, maxBudgets = max(maxLimiters, l), max(maxBudgets, b)
			maxGoroutines = max(maxGoroutines, runtime.NumGoroutine())
		}
	}
	return
}

// A service with a Budget and a Limiter per tenant does not grow without
// bound: with an idle timeout of 1s, 10k tenants churned at 1k a second for
// 10 s leave the Client's maps at about the tenants of the last second and
// a quarter (the timeout and the sweep, every quarter of it), and the
// goroutines flat. Without one, every tenant stays.
//
// The bound is the churn rate times 1.25 s, whatever the rate: until
// 2026-12-06 this churned 100k tenants at 10k a second against a bound of
// 13,000 (12,400 seen), and took 70 s under the race detector, twice per
// CI run. A tenth of the rate over the same 10 s, the same idle timeout and
// sweep, and a tenth of the bound (1,300) assert the same thing in a
// tenth of the work: the maps must shed tenants eight times over, and a
// Client that forgot nothing, or forgot a sweep late, would hold 10,000 or
// 1,500. (In -short mode 4 s of churn, three times over.)
func TestIdleTenantsAreForgotten(t *testing.T) {
	const perTick = 10 // every 10 ms: 1k tenants a second
	n := 10_000
	if testing.Short() {
		n = 4_000
	}
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dialDirect(t, client.WithIdleTimeout(time.Second))
		start := runtime.NumGoroutine()
		l, b, g := churn(t, f, c, n, perTick)
		t.Logf("%d tenants: at most %d limiters, %d budgets, %d goroutines (%d at the start)", n, l, b, g, start)
		if most := 1300; l > most || b > most {
			t.Errorf("maps grew to %d limiters, %d budgets; want about 1,250 at most (1.25s of tenants)", l, b)
		}
		if g > start+50 {
			t.Errorf("goroutines grew from %d to %d", start, g)
		}
		time.Sleep(3 * time.Second)
		if l, b := client.SizesForTest(c); l != 0 || b != 0 {
			t.Errorf("after 3 idle seconds: %d limiters, %d budgets; want 0", l, b)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dialDirect(t)
		l, b, _ := churn(t, f, c, 2000, 100)
		if l != 2000 || b != 2000 {
			t.Errorf("without an idle timeout: %d limiters, %d budgets; want every tenant's, 2000", l, b)
		}
	})
}

// Limiter.Close gives its lease back and leaves the Client's map: later
// calls fail with ErrClosed, and Client.Limiter makes a new Limiter.
func TestLimiterClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		lim := client.Limit{Rate: 1000, Per: time.Second}
		l := client.LeasingForTest(c.Limiter("k", lim))
		if !l.Allow() {
			t.Fatal("Allow = false")
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if rels := f.releases(); len(rels) != 1 {
			t.Errorf("releases = %d, want the lease given back", len(rels))
		}
		if l.Allow() || l.State() != client.StateClosed {
			t.Errorf("after Close: Allow true or state %v", l.State())
		}
		if err := l.Wait(t.Context()); !errors.Is(err, client.ErrClosed) {
			t.Errorf("Wait after Close = %v, want ErrClosed", err)
		}
		if err := l.Close(); err != nil {
			t.Errorf("second Close = %v", err)
		}
		l2 := c.Limiter("k", lim)
		if l2 == l || !l2.Allow() {
			t.Errorf("Client.Limiter after Close returned the closed one, or one that does not admit")
		}
	})
}

// Budget.Close gives its leases back and leaves the Client's map; an open
// reservation can still be settled (its excess is charged), and its Settle
// says that its lease ended (ErrExpired).
func TestBudgetClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		b := client.BudgetLeasingForTest(c.Budget("s", bigRules()...))
		ctx := t.Context()
		r, err := b.Reserve(ctx, call)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if rels := f.releases(); len(rels) != 1 || len(rels[0].GetUnused()) != 3 {
			t.Fatalf("releases = %v; want the pool lease of 3 items given back", rels)
		}
		if _, err := b.Reserve(ctx, call); !errors.Is(err, client.ErrClosed) {
			t.Errorf("Reserve after Close = %v, want ErrClosed", err)
		}
		if err := b.Block(ctx, time.Second); !errors.Is(err, client.ErrClosed) {
			t.Errorf("Block after Close = %v, want ErrClosed", err)
		}
		if err := r.Settle(ctx, client.Cost{Requests: 1, InputTokens: 1200, OutputTokens: 1500}); !errors.Is(err, client.ErrExpired) {
			t.Fatalf("Settle after Close = %v, want ErrExpired", err)
		}
		if ch := f.charges(); len(ch) != 1 || ch[0].GetItems()[0].GetTokens() != 500 {
			t.Errorf("charges = %v; want the 500 output tokens above the reservation", ch)
		}
		if b2 := c.Budget("s", bigRules()...); b2 == b {
			t.Errorf("Client.Budget after Close returned the closed one")
		}
	})
}

// TakeN says why it refused: the cluster's retry-after, or never.
func TestTakeNDecision(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		l := c.Limiter("k", client.Limit{Rate: 10, Per: time.Second})
		for i := range 10 {
			if d := l.TakeN(1); !d.Allowed {
				t.Fatalf("TakeN #%d = %+v, want allowed", i, d)
			}
		}
		d := l.TakeN(1)
		if d.Allowed || d.RetryAfter <= 0 || d.RetryAfter > 100*time.Millisecond {
			t.Errorf("TakeN on an empty key = %+v; want refused, retry within 100ms", d)
		}
		if d := l.TakeN(11); d.Allowed || d.RetryAfter >= 0 {
			t.Errorf("TakeN(11) of a burst of 10 = %+v; want refused for good (negative)", d)
		}
		time.Sleep(time.Second)
		if d := l.TakeN(1); !d.Allowed || d.Remaining < 0 {
			t.Errorf("TakeN after a second = %+v; want allowed", d)
		}
	})
}

// A closed Budget or Limiter says so, and not that the Client closed
// (before: "leasehold: client closed" after Budget.Close, or after the idle
// timeout forgot it, while the Client was open); the error still matches
// ErrClosed. After the Client's Close, the Client's error.
func TestClosedErrorNamesWhatClosed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t, client.WithIdleTimeout(time.Second))
		ctx := t.Context()
		check := func(what string, err error, want ...string) {
			t.Helper()
			if !errors.Is(err, client.ErrClosed) {
				t.Errorf("%s: %v, want ErrClosed", what, err)
				return
			}
			for _, w := range want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%s: %q, want it to say %q", what, err, w)
				}
			}
			if strings.Contains(err.Error(), "client closed") {
				t.Errorf("%s: %q, but the Client is open", what, err)
			}
		}
		keep := c.Limiter("keep", client.Limit{Rate: 1000, Per: time.Second}) // keeps the Client's maps non-empty
		keepB := c.Budget("keep", aiRules()...)

		b := c.Budget("closed", aiRules()...)
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		_, err := b.Reserve(ctx, call)
		check("Reserve after Budget.Close", err, `budget "closed"`)
		_, err = b.TryReserve(call)
		check("TryReserve after Budget.Close", err, `budget "closed"`)
		check("Block after Budget.Close", b.Block(ctx, time.Second), `budget "closed"`)

		l := c.Limiter("closed", client.Limit{Rate: 1000, Per: time.Second})
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		check("Wait after Limiter.Close", l.Wait(ctx), `limiter "closed"`)

		idle := c.Budget("idle", aiRules()...)
		idleL := c.Limiter("idle", client.Limit{Rate: 1000, Per: time.Second})
		for range 6 { // keep the others in use while these idle
			time.Sleep(500 * time.Millisecond)
			if err := keep.Wait(ctx); err != nil {
				t.Fatal(err)
			}
			r, err := keepB.Reserve(ctx, call)
			if err != nil {
				t.Fatal(err)
			}
			if err := r.Cancel(); err != nil {
				t.Fatal(err)
			}
		}
		_, err = idle.Reserve(ctx, call)
		check("Reserve on a forgotten Budget", err, `budget "idle"`, "idle")
		check("Wait on a forgotten Limiter", idleL.Wait(ctx), `limiter "idle"`, "idle")

		c.Close()
		_, err = keepB.Reserve(ctx, call)
		if !errors.Is(err, client.ErrClosed) || !strings.Contains(err.Error(), "client closed") {
			t.Errorf("Reserve after the Client's Close = %v, want the Client's ErrClosed", err)
		}
	})
}
