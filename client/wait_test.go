package client_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/transport"
)

// Wait fails fast when the cluster says the tokens come after the context's
// deadline, and otherwise waits exactly as long as it says.
func TestWaitHonoursContextDeadline(t *testing.T) {
	for _, tt := range []struct {
		name  string
		limit client.Limit
	}{
		{name: "leased", limit: client.Limit{Rate: 100, Per: time.Second}},
		{name: "central", limit: client.Limit{Rate: 1, Per: time.Second}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 1)
				c := f.dial(t)
				l := client.LeasingForTest(c.Limiter("k", tt.limit))
				t0 := time.Now()
				f.set(func(f *fakeCluster) { f.mu.denyUntil = t0.Add(5 * time.Second) })

				ctx, cancel := context.WithTimeout(t.Context(), time.Second)
				err := l.Wait(ctx)
				cancel()
				if !errors.Is(err, client.ErrWouldExceedDeadline) {
					t.Fatalf("Wait with 1s left, admitted in 5s = %v, want ErrWouldExceedDeadline", err)
				}
				if d := time.Since(t0); d != 0 {
					t.Errorf("Wait failed after %v, want at once", d)
				}
				if l.Allow() {
					t.Error("Allow while denied = true, want false")
				}

				ctx, cancel = context.WithTimeout(t.Context(), 10*time.Second)
				err = l.Wait(ctx)
				cancel()
				if err != nil {
					t.Fatalf("Wait with 10s left, admitted in 5s = %v, want nil", err)
				}
				if d := time.Since(t0); d != 5*time.Second {
					t.Errorf("Wait returned after %v, want 5s", d)
				}

				// Canceled while waiting.
				f.set(func(f *fakeCluster) { f.mu.denyUntil = time.Now().Add(time.Hour) })
				time.Sleep(3 * time.Second) // any lease expires
				ctx, cancel = context.WithCancel(t.Context())
				go func() { time.Sleep(time.Second); cancel() }()
				if err := l.Wait(ctx); !errors.Is(err, context.Canceled) {
					t.Errorf("Wait canceled = %v, want context.Canceled", err)
				}
			})
		})
	}
}

// WaitN for more than the burst can never succeed, and says so.
func TestWaitMoreThanBurst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: 100, Per: time.Second, Burst: 10}))
		if err := l.WaitN(t.Context(), 11); !errors.Is(err, client.ErrExceedsLimit) {
			t.Errorf("WaitN(11) with burst 10 = %v, want ErrExceedsLimit", err)
		}
		if l.AllowN(11) {
			t.Error("AllowN(11) with burst 10 = true")
		}
		if err := l.WaitN(t.Context(), 10); err != nil {
			t.Errorf("WaitN(10) with burst 10 = %v, want nil", err)
		}
		if !l.AllowN(0) {
			t.Error("AllowN(0) = false, want true")
		}
		if l.AllowN(-1) {
			t.Error("AllowN(-1) = true, want false")
		}
	})
}

// Many waiters share refreshes; each is admitted once, and the rate holds.
func TestManyWaiters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: 100, Per: time.Second}))
		t0 := time.Now()
		var wg sync.WaitGroup
		for range 50 {
			wg.Go(func() {
				for range 10 {
					if err := l.Wait(t.Context()); err != nil {
						t.Errorf("Wait = %v", err)
						return
					}
				}
			})
		}
		wg.Wait()
		// 500 tokens at 100/s with a burst of 100: at least 4s.
		if d := time.Since(t0); d < 4*time.Second || d > 6*time.Second {
			t.Errorf("500 Waits took %v, want about 4s", d)
		}
	})
}

// A key or limit the cluster rejects admits nothing; Wait says why.
func TestRejectedKey(t *testing.T) {
	for _, tt := range []struct {
		name    string
		key     string
		limit   client.Limit
		noLimit bool
		want    error
	}{
		{name: "empty key", key: "", limit: client.Limit{Rate: 1, Per: time.Second}, want: transport.ErrInvalid},
		{name: "long key", key: string(make([]byte, transport.MaxKeyLen+1)), limit: client.Limit{Rate: 1, Per: time.Second}, want: transport.ErrInvalid},
		{name: "zero rate", key: "k", limit: client.Limit{Per: time.Second}, want: transport.ErrInvalid},
		{name: "zero period", key: "k", limit: client.Limit{Rate: 1}, want: transport.ErrInvalid},
		{name: "concurrency algorithm", key: "k", limit: client.Limit{Algorithm: 3, Rate: 1, Per: time.Second}, want: transport.ErrInvalid},
		{name: "bad share", key: "k", limit: client.Limit{Rate: 1, Per: time.Second, FailurePolicy: client.FallbackShare{}}, want: transport.ErrInvalid},
		{name: "no limit on the server", key: "k", limit: client.Limit{Rate: 100, Per: time.Second}, noLimit: true, want: transport.ErrNoLimit},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 1)
				f.set(func(f *fakeCluster) { f.mu.noLimit = tt.noLimit })
				c := f.dial(t)
				l := client.LeasingForTest(c.Limiter(tt.key, tt.limit))
				if l.Allow() {
					t.Error("Allow = true, want false")
				}
				err := l.Wait(t.Context())
				if !errors.Is(err, tt.want) {
					t.Errorf("Wait = %v, want %v", err, tt.want)
				}
				var inv *transport.InvalidError
				if errors.Is(tt.want, transport.ErrInvalid) && !errors.As(err, &inv) {
					t.Errorf("Wait = %v, want a *transport.InvalidError", err)
				}
				if got := l.State(); got != client.StateInvalid {
					t.Errorf("State = %v, want %v", got, client.StateInvalid)
				}
			})
		})
	}
}
