package client_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
)

// A review (3 nodes, 2 processes) found a Reserve whose deadline ended
// while the cluster applied its Acquire report "cluster unreachable" on a
// healthy cluster, and the slot the cluster granted it held until its
// MaxLease (10s): 150 Reserves of 0.2–3 ms on a cap of 100 left 87 slots
// held. The caller gets its ctx's error, and the slot and the estimate come
// back once the answer does.
func TestReserveLeftByItsCallerKeepsNoSlot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		b := c.Budget("s", slotRules(0)...)
		f.set(func(f *fakeCluster) { f.mu.replyDelay = 50 * time.Millisecond })
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
		_, err := b.Reserve(ctx, client.Cost{Requests: 1, InputTokens: 10})
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Reserve past its deadline = %v, want context.DeadlineExceeded", err)
		}
		if errors.Is(err, client.ErrUnavailable) {
			t.Errorf("the caller's deadline is reported as ErrUnavailable: %v", err)
		}
		f.set(func(f *fakeCluster) { f.mu.replyDelay = 0 })
		time.Sleep(time.Second)
		synctest.Wait()
		if got := f.level("s/in-flight"); got != 0 {
			t.Errorf("slots held a second after the caller left = %d, want 0 (slot MaxLease 10s)", got)
		}
		rels := f.releases()
		if len(rels) != 1 || rels[0].GetUnused()[1] != 10 {
			t.Errorf("releases = %v; want one giving back the 10 input tokens reserved", rels)
		}
		// The slot is there for the next caller.
		r, err := b.TryReserve(client.Cost{Requests: 1, InputTokens: 10})
		if err != nil {
			t.Fatalf("TryReserve after the caller left = %v", err)
		}
		r.Cancel()
	})
}

// The review found a process refused a slot fail fast for the rest of its
// backoff (up to 1s, jittered), reported as the cluster's wait ("fits in
// 771ms at the earliest", ErrWouldExceedDeadline), while another process's
// freed slots went to its own waiters at once. A Reserve waits for the
// slot within its deadline, and asks again when the backoff ends.
func TestReserveForAFreedSlotDoesNotFailFast(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		a := f.dial(t).Budget("s", slotRules(0)...)
		b := f.dial(t).Budget("s", slotRules(0)...)
		ctx := t.Context()
		cost := client.Cost{Requests: 1, InputTokens: 10}
		failed := 0
		for range 20 {
			r, err := a.Reserve(ctx, cost)
			if err != nil {
				t.Fatal(err)
			}
			for range 8 { // refused eight times in a row while a holds the slot
				_, err := b.TryReserve(cost)
				var re *client.RuleError
				if !errors.As(err, &re) || re.Counts != client.InFlight || !errors.Is(err, client.ErrDenied) {
					t.Fatalf("TryReserve = %v, want a denial by the in-flight rule", err)
				}
				if re.RetryAfter != 0 {
					t.Fatalf("TryReserve's RetryAfter = %v; the cluster cannot say when a slot comes back", re.RetryAfter)
				}
				time.Sleep(20 * time.Millisecond)
			}
			b.TryReserve(cost) // refused again: remembered
			if err := r.Settle(ctx, cost); err != nil {
				t.Fatal(err)
			}
			synctest.Wait()
			dctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
			r2, err := b.Reserve(dctx, cost)
			cancel()
			if err != nil {
				failed++
				t.Log(err)
				continue
			}
			r2.Settle(ctx, cost)
			synctest.Wait()
		}
		if failed > 0 {
			t.Errorf("%d of 20 Reserve(100ms) failed with the slot free", failed)
		}
	})
}

// A Reserve that waits for a slot until its ctx ends says so: a denial by
// the in-flight rule that matches ctx's error, not a wait it did not make.
func TestReserveWaitingForASlotEndsWithItsContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		a := f.dial(t).Budget("s", slotRules(0)...)
		b := f.dial(t).Budget("s", slotRules(0)...)
		cost := client.Cost{Requests: 1, InputTokens: 10}
		r, err := a.Reserve(t.Context(), cost)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Cancel()
		start := time.Now()
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		_, err = b.Reserve(ctx, cost)
		var re *client.RuleError
		if !errors.As(err, &re) || re.Counts != client.InFlight || !errors.Is(err, client.ErrDenied) ||
			!errors.Is(err, context.DeadlineExceeded) || errors.Is(err, client.ErrWouldExceedDeadline) {
			t.Fatalf("Reserve = %v; want a denial by the in-flight rule matching context.DeadlineExceeded", err)
		}
		if waited := time.Since(start); waited != 300*time.Millisecond {
			t.Errorf("Reserve returned after %v, want its whole 300ms deadline", waited)
		}
		if n := len(f.acquires()); n < 4 {
			t.Errorf("acquires = %d; want the slot asked again within the 300ms", n)
		}
	})
}

// The review saw Reserve(500ms), with 2 of 3 nodes killed, return a bare
// context deadline exceeded on one path and ErrUnavailable on another. The
// rule: the error matches ctx's whenever ctx ends first, and ErrUnavailable
// as well once an exchange with the cluster has failed (no answer within
// the request timeout), on the refresh path and the reservation's own.
func TestReserveUnavailableOnceAnExchangeFailed(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rules []client.Rule
	}{
		{"own acquire", slotRules(0)},
		{"refresh", bigRules()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 1)
				b := f.dial(t).Budget("s", tc.rules...)
				if tc.name == "refresh" {
					b = client.BudgetLeasingForTest(b)
				}
				f.set(func(f *fakeCluster) { f.mu.down = true })
				// The first has no failed exchange to go by; from the
				// request timeout (2s) on, the cluster's failure is known.
				for i := range 6 {
					ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
					_, err := b.Reserve(ctx, call)
					cancel()
					into := 500 * time.Millisecond * time.Duration(i)
					if !errors.Is(err, context.DeadlineExceeded) {
						t.Fatalf("Reserve %v into the outage = %v, want context.DeadlineExceeded", into, err)
					}
					got := errors.Is(err, client.ErrUnavailable)
					if i == 0 && got || i >= 5 && !got {
						t.Errorf("Reserve %v into the outage = %v; matches ErrUnavailable %v, want %v", into, err, got, !got)
					}
				}
			})
		})
	}
}

// A slot given back by an undo (its reservation's caller left before the
// grant arrived, or another rule refused) wakes this process's callers
// waiting for a slot, as a Settle's does: a review noticed they slept until
// their backoff (up to 100ms) while the slot they waited for was free.
func TestSlotGivenBackByAnUndoWakesWaiters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		b := f.dial(t).Budget("s", slotRules(0)...)
		cost := client.Cost{Requests: 1, InputTokens: 10}
		const reply = 50 * time.Millisecond
		f.set(func(f *fakeCluster) { f.mu.replyDelay = reply })
		start := time.Now()
		left := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
			defer cancel()
			_, err := b.Reserve(ctx, cost) // granted the slot at 0, answered at 50ms
			left <- err
		}()
		synctest.Wait()
		f.set(func(f *fakeCluster) { f.mu.replyDelay = 0 })
		time.Sleep(time.Millisecond)
		r, err := b.Reserve(t.Context(), cost) // refused until the undo at 50ms
		if err != nil {
			t.Fatal(err)
		}
		defer r.Cancel()
		if err := <-left; !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Reserve past its deadline = %v, want context.DeadlineExceeded", err)
		}
		if got := time.Since(start); got != reply {
			t.Errorf("the waiting Reserve got the slot %v after the first was sent, want %v: when the undo gave it back", got, reply)
		}
	})
}
