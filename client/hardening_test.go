package client_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/transport"
)

// Issue 13, item 3: a key that is not valid UTF-8 failed to encode, was taken
// for "cluster unreachable", and with FailOpen a 1-per-hour key admitted 1000
// of 1000. It is the caller's error: StateInvalid, an *InvalidError naming
// the key, nothing admitted whatever the failure policy, nothing sent.
func TestInvalidUTF8KeyFailOpenAdmittedEverything(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t, client.WithFailurePolicy(client.FailOpen))
		l := c.Limiter("tenant-\xff\xfe", client.Limit{Rate: 1, Per: time.Hour})
		admitted := 0
		for range 1000 {
			if l.Allow() {
				admitted++
			}
		}
		if admitted != 0 {
			t.Errorf("admitted %d of 1000 on a key that is not valid UTF-8, want 0", admitted)
		}
		if got := l.State(); got != client.StateInvalid {
			t.Errorf("State = %v, want %v", got, client.StateInvalid)
		}
		err := l.Wait(t.Context())
		var inv *transport.InvalidError
		if !errors.As(err, &inv) || inv.Field != "key" || !strings.Contains(inv.Reason, "UTF-8") {
			t.Errorf("Wait = %v, want an *InvalidError on field key about UTF-8", err)
		}
		if !errors.Is(err, transport.ErrInvalid) || errors.Is(err, client.ErrUnavailable) {
			t.Errorf("Wait = %v: want it to match ErrInvalid and not ErrUnavailable", err)
		}
		if n := len(f.acquires()); n != 0 {
			t.Errorf("%d Acquires sent for an invalid key, want 0", n)
		}
	})
}

// Issue 13, item 8: Close while a Wait slept on a cluster denial returned
// ErrClosed only when the sleep ended (29 s later on a 1-per-30 s key). Every
// wait watches Close: the Wait returns ErrClosed at once.
func TestCloseReturnedOnlyWhenDenialSleepEnded(t *testing.T) {
	for _, tt := range []struct {
		name   string
		policy client.FailurePolicy
		setup  func(f *fakeCluster, l *client.Limiter)
	}{
		{name: "denial", policy: client.FailClosed, setup: func(f *fakeCluster, l *client.Limiter) {
			l.Allow() // takes the one token
		}},
		{name: "fallback share", policy: client.FallbackShare{Clients: 4, For: time.Hour}, setup: func(f *fakeCluster, l *client.Limiter) {
			// The share of a 1-per-30 s key starts empty: its first token
			// comes 2 minutes into the fallback.
			f.set(func(f *fakeCluster) { f.mu.down = true })
			l.Allow()
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 1)
				c := f.dial(t, client.WithFailurePolicy(tt.policy))
				l := c.Limiter("k", client.Limit{Rate: 1, Per: 30 * time.Second})
				tt.setup(f, l)
				done := make(chan error, 1)
				go func() { done <- l.Wait(context.Background()) }()
				synctest.Wait() // Wait is asleep
				t0 := time.Now()
				if err := c.Close(); err != nil {
					t.Errorf("Close = %v", err)
				}
				select {
				case err := <-done:
					if !errors.Is(err, client.ErrClosed) {
						t.Errorf("Wait = %v, want ErrClosed", err)
					}
				case <-time.After(time.Minute):
					t.Fatal("Wait still asleep a minute after Close")
				}
				if d := time.Since(t0); d > 0 {
					t.Errorf("Wait returned %v after Close, want at once", d)
				}
			})
		})
	}
}

// Issue 13, item 8: WithClientID([]byte{}) was accepted silently (the empty
// id was replaced by a random one). Dial rejects it, and nil too.
func TestWithClientIDEmptyAcceptedSilently(t *testing.T) {
	for _, id := range [][]byte{{}, nil} {
		c, err := client.Dial(t.Context(), []string{"127.0.0.1:1"}, client.WithInsecure(), client.WithClientID(id))
		if err == nil {
			c.Close()
			t.Errorf("Dial with WithClientID(%#v) = nil error, want one", id)
			continue
		}
		if !strings.Contains(err.Error(), "client id") {
			t.Errorf("Dial with WithClientID(%#v) = %v, want an error about the client id", id, err)
		}
	}
}
