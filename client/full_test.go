package client_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/transport"
)

// TestFullClusterBacksOff is the regression test of a Limiter asking a full
// cluster (transport.ErrFull: its key is new and the cluster holds
// --max-keys) again after an outage's backoff, at most a second, for as
// long as a caller waits: it asks again only after fullBackoff, follows its
// failure policy meanwhile, and a Wait that gives up says why.
func TestFullClusterBacksOff(t *testing.T) {
	for _, tt := range []struct {
		name   string
		policy client.FailurePolicy
	}{
		{name: "fail closed", policy: client.FailClosed},
		{name: "fail open", policy: client.FailOpen},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 1)
				f.set(func(f *fakeCluster) { f.mu.full = true })
				c := f.dial(t, client.WithFailurePolicy(tt.policy))
				l := c.Limiter("k", client.Limit{Rate: 100, Per: time.Second})

				const waited = 30 * time.Second
				ctx, cancel := context.WithTimeout(t.Context(), waited)
				err := l.Wait(ctx)
				cancel()
				if tt.policy == client.FailOpen {
					if err != nil {
						t.Fatalf("Wait = %v, want nil (fail open)", err)
					}
					// Allows follow the policy until the cluster has room.
					for i := range 100 {
						if !l.Allow() {
							t.Fatalf("Allow #%d with the cluster full = false, want true (fail open)", i+1)
						}
						time.Sleep(300 * time.Millisecond)
					}
				} else {
					var fe *transport.FullError
					if !errors.Is(err, transport.ErrFull) || !errors.As(err, &fe) || fe.Resource != transport.FullKeys ||
						!errors.Is(err, client.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
						t.Fatalf("Wait = %v, want ErrUnavailable, DeadlineExceeded and a *transport.FullError", err)
					}
				}
				// At most one Acquire per 2.5s (half of fullBackoff), and
				// the first at once.
				elapsed := time.Since(f.start)
				if n, most := len(f.acquires()), int(elapsed/(2500*time.Millisecond))+1; n > most {
					t.Errorf("%d Acquires to a full cluster in %v, want at most %d", n, elapsed, most)
				}

				f.set(func(f *fakeCluster) { f.mu.full = false })
				time.Sleep(5 * time.Second) // past the backoff
				l.Allow()                   // starts a refresh in the background
				synctest.Wait()
				if !l.Allow() {
					t.Error("Allow once the cluster has room = false, want true")
				}
			})
		})
	}
}

// TestWaitGivenUpInAnOutageMatchesOnlyTheCallersError: a fail-closed Wait
// the caller cancels while the cluster does not answer matches
// ErrUnavailable and context.Canceled, not the last attempt's own timeout
// or unknown outcome. Regression: the error wrapped the last attempt's,
// so a cancelled Wait also matched context.DeadlineExceeded and
// transport.ErrUnknownOutcome.
func TestWaitGivenUpInAnOutageMatchesOnlyTheCallersError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		release := f.holdAcquires()
		defer release()
		c := f.dial(t, client.WithFailurePolicy(client.FailClosed))
		l := c.Limiter("k", client.Limit{Rate: 100, Per: time.Second})

		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(20*time.Second, cancel)
		err := l.Wait(ctx)
		if !errors.Is(err, client.ErrUnavailable) || !errors.Is(err, context.Canceled) {
			t.Fatalf("Wait = %v, want ErrUnavailable and context.Canceled", err)
		}
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, transport.ErrUnknownOutcome) {
			t.Errorf("Wait = %v: matches the last attempt's timeout, not only the caller's cancel", err)
		}
	})
}
