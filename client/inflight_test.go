package client_test

import (
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
)

// slotRules: one call in flight at a time, and input tokens.
func slotRules(slotLease time.Duration) []client.Rule {
	return []client.Rule{
		{Counts: client.InFlight, Limit: client.Limit{Rate: 1, MaxLease: slotLease}},
		{Counts: client.InputTokens, Limit: client.Limit{Rate: 1_800_000, Per: time.Minute}},
	}
}

// wantSlotRefused fails unless TryReserve is refused by the InFlight rule.
func wantSlotRefused(t *testing.T, b *client.Budget, when string) {
	t.Helper()
	r, err := b.TryReserve(client.Cost{Requests: 1, InputTokens: 10})
	var re *client.RuleError
	if !errors.As(err, &re) || re.Counts != client.InFlight || !errors.Is(err, client.ErrDenied) {
		r.Cancel()
		t.Fatalf("%s: TryReserve = %v; want a denial by the in-flight rule", when, err)
	}
}

// LiteLLM #27955: a cancelled stream leaked its in-flight slot for good, and
// the key answered 429 forever. A reservation cancelled when its stream is
// cancelled gives its slot back at once, for every process.
func TestCancelledStreamLeaksNoInFlightSlot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		b := c.Budget("s", slotRules(0)...)
		ctx := t.Context()
		r, err := b.Reserve(ctx, client.Cost{Requests: 1, InputTokens: 10})
		if err != nil {
			t.Fatal(err)
		}
		if got := f.level("s/in-flight"); got != 1 {
			t.Fatalf("slots held = %d, want 1", got)
		}
		wantSlotRefused(t, b, "while the stream runs")
		other := f.dial(t).Budget("s", slotRules(0)...)
		wantSlotRefused(t, other, "another process, while the stream runs")

		// The stream is cancelled: its caller cancels the reservation.
		if err := r.Cancel(); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if got := f.level("s/in-flight"); got != 0 {
			t.Fatalf("slots held after Cancel = %d, want 0", got)
		}
		// The other process looks again within a second of its refusal.
		time.Sleep(time.Second)
		r2, err := other.TryReserve(client.Cost{Requests: 1, InputTokens: 10})
		if err != nil {
			t.Fatalf("another process after Cancel: %v", err)
		}
		if err := r2.Settle(ctx, client.Cost{Requests: 1, InputTokens: 5}); err != nil {
			t.Fatal(err)
		}
		if got := f.level("s/in-flight"); got != 0 {
			t.Errorf("slots held after Settle = %d, want 0", got)
		}
	})
}

// A reservation never settled keeps its slot until its TTL, the keeper
// renewing the slot's lease meanwhile; then the slot comes back within the
// slot's lease life, and its tokens stay charged.
func TestUnsettledReservationSlotComesBackAfterTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t, client.WithReservationTTL(5*time.Second))
		b := c.Budget("s", slotRules(time.Second)...)
		start := time.Now()
		if _, err := b.Reserve(t.Context(), client.Cost{Requests: 1, InputTokens: 1000}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(4 * time.Second)
		wantSlotRefused(t, b, "4s into a 5s TTL")
		if n := len(f.extends()); n < 3 {
			t.Errorf("extends of the 1s slot lease over 4s = %d, want at least 3", n)
		}
		time.Sleep(5*time.Second + time.Second - time.Since(start))
		synctest.Wait()
		if got := f.level("s/in-flight"); got != 0 {
			t.Fatalf("slots held a lease life after the TTL = %d, want 0", got)
		}
		if got, want := f.level("s/input-tokens"), int64(1_800_000-1000); got > want+6*30_000 || got < want {
			t.Errorf("input tokens = %d; want the 1000 reserved still charged", got)
		}
	})
}

// KeepAlive holds the slot past the TTL, for as long as it is called.
func TestKeepAliveHoldsTheSlot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t, client.WithReservationTTL(3*time.Second))
		b := c.Budget("s", slotRules(time.Second)...)
		r, err := b.Reserve(t.Context(), client.Cost{Requests: 1, InputTokens: 1000})
		if err != nil {
			t.Fatal(err)
		}
		for range 10 {
			time.Sleep(2 * time.Second)
			if err := r.KeepAlive(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
		wantSlotRefused(t, b, "20s of a stream kept alive")
		if err := r.Settle(t.Context(), client.Cost{Requests: 1, InputTokens: 800}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if got := f.level("s/in-flight"); got != 0 {
			t.Fatalf("slots held after Settle = %d, want 0", got)
		}
		rels := f.releases()
		if len(rels) == 0 || rels[len(rels)-1].GetUnused()[1] != 200 {
			t.Errorf("releases = %v; want the last to give back 200 input tokens", rels)
		}
		time.Sleep(5 * time.Second)
		if err := r.KeepAlive(t.Context()); err != nil {
			t.Errorf("KeepAlive after Settle = %v, want nil", err)
		}
	})
}

// KeepAlive after the TTL has passed is too late: ErrExpired.
func TestKeepAliveTooLate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t, client.WithReservationTTL(2*time.Second))
		b := c.Budget("s", slotRules(time.Second)...)
		r, err := b.Reserve(t.Context(), client.Cost{Requests: 1, InputTokens: 1000})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(4 * time.Second)
		if err := r.KeepAlive(t.Context()); !errors.Is(err, client.ErrExpired) {
			t.Errorf("KeepAlive after the TTL = %v, want ErrExpired", err)
		}
		// Settle says so too, and still charges what it used beyond the
		// reservation.
		if err := r.Settle(t.Context(), client.Cost{Requests: 1, InputTokens: 1500}); !errors.Is(err, client.ErrExpired) {
			t.Fatalf("Settle after the TTL = %v, want ErrExpired", err)
		}
		if ch := f.charges(); len(ch) != 1 || ch[0].GetItems()[0].GetTokens() != 500 {
			t.Errorf("charges = %v; want 500 input tokens", ch)
		}
	})
}

// A call longer than its pool lease still gets its unused tokens back: the
// keeper keeps the lease alive while the reservation is open, and releases
// it with the refund once it has ended.
func TestRefundAfterThePoolLeaseDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		b := client.BudgetLeasingForTest(c.Budget("s", bigRules()...))
		r, err := b.Reserve(t.Context(), call)
		if err != nil {
			t.Fatal(err)
		}
		lease := f.acquires()[0]
		time.Sleep(10 * time.Second) // a long stream; the lease's life is 2s
		if err := r.Settle(t.Context(), client.Cost{Requests: 1, InputTokens: 1200, OutputTokens: 300}); err != nil {
			t.Fatal(err)
		}
		if n := len(f.extends()); n < 4 {
			t.Errorf("extends over 10s = %d, want at least 4", n)
		}
		time.Sleep(3 * time.Second)
		synctest.Wait()
		var found bool
		for _, rel := range f.releases() {
			if len(rel.GetUnused()) == 3 {
				found = true
				if out := rel.GetUnused()[2]; out < 700 {
					t.Errorf("the lease's release gives back %d output tokens, want the 700 refunded and more", out)
				}
			}
		}
		if !found {
			t.Errorf("releases = %v; want the pool lease (acquired as %v) given back", f.releases(), lease.req)
		}
	})
}
