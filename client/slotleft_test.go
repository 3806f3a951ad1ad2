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
