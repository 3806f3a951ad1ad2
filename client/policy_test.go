package client_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
)

// With the cluster unreachable, a Limiter spends what it holds until its
// leases expire, then follows its failure policy; it leases again once the
// cluster is back.
func TestUnreachableCluster(t *testing.T) {
	limit := client.Limit{Rate: 100, Per: time.Second}
	for _, tt := range []struct {
		name   string
		policy client.FailurePolicy
		// admitted is how many of 1000 Allows, one every 10ms from the
		// start of the fallback, are admitted.
		admitted int
	}{
		{name: "fail closed", policy: client.FailClosed, admitted: 0},
		{name: "fail open", policy: client.FailOpen, admitted: 1000},
		// 100/s split among 4 clients is 25/s, starting empty, for 6s.
		{name: "fallback share", policy: client.FallbackShare{Clients: 4, For: 6 * time.Second}, admitted: 150},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 1)
				c := f.dial(t, client.WithFailurePolicy(tt.policy))
				l := client.LeasingForTest(c.Limiter("k", limit))
				t0 := time.Now()
				if !l.Allow() {
					t.Fatal("first Allow = false, want true")
				}
				f.set(func(f *fakeCluster) { f.mu.down = true })
				held := f.granted()[0] - 1
				for i := range held {
					if !l.Allow() {
						t.Fatalf("Allow #%d of %d held tokens with the cluster down = false, want true", i+1, held)
					}
				}
				if l.State() == client.StateFallback {
					t.Fatal("State = fallback while a lease is valid")
				}
				time.Sleep(validityOf(2*time.Second) - time.Since(t0))

				// The lease has expired: the first call learns the cluster
				// is unreachable (bounded by the request timeout).
				l.Allow()
				if got := l.State(); got != client.StateFallback {
					t.Fatalf("State = %v, want %v", got, client.StateFallback)
				}
				admitted := 0
				for range 1000 {
					if l.Allow() {
						admitted++
					}
					time.Sleep(10 * time.Millisecond)
				}
				if admitted < tt.admitted-1 || admitted > tt.admitted {
					t.Errorf("admitted %d of 1000 in the fallback, want %d", admitted, tt.admitted)
				}

				ctx, cancel := context.WithTimeout(t.Context(), time.Second)
				err := l.Wait(ctx)
				cancel()
				switch tt.policy.(type) {
				case client.FailMode:
					if tt.policy == client.FailOpen && err != nil {
						t.Errorf("Wait = %v, want nil (fail open)", err)
					}
					if tt.policy == client.FailClosed && (!errors.Is(err, client.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded)) {
						t.Errorf("Wait = %v, want ErrUnavailable and DeadlineExceeded", err)
					}
				case client.FallbackShare:
					// Past For the share fails closed.
					if !errors.Is(err, client.ErrUnavailable) {
						t.Errorf("Wait after the share ended = %v, want ErrUnavailable", err)
					}
				}

				f.set(func(f *fakeCluster) { f.mu.down = false })
				time.Sleep(2 * time.Second) // past any backoff
				l.Allow()                   // starts a refresh in the background
				synctest.Wait()
				if !l.Allow() {
					t.Error("Allow with the cluster back = false, want true")
				}
				if got := l.State(); got != client.StateLeased {
					t.Errorf("State with the cluster back = %v, want %v", got, client.StateLeased)
				}
			})
		})
	}
}

// A Limit's own failure policy overrides the Client's.
func TestLimitPolicyOverridesClient(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		f.set(func(f *fakeCluster) { f.mu.down = true })
		c := f.dial(t, client.WithFailurePolicy(client.FailClosed))
		open := client.LeasingForTest(c.Limiter("open", client.Limit{Rate: 100, Per: time.Second, FailurePolicy: client.FailOpen}))
		closed := client.LeasingForTest(c.Limiter("closed", client.Limit{Rate: 100, Per: time.Second}))
		if !open.Allow() {
			t.Error("fail-open Limiter: Allow = false, want true")
		}
		if closed.Allow() {
			t.Error("fail-closed Limiter: Allow = true, want false")
		}
	})
}
