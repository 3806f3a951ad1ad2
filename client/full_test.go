package client_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/internal/testlog"
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

// TestWaitShortOfHeldTokensKeepsTheBackoff is the regression test of a
// fail-closed Wait for more than the Limiter holds, while the cluster
// refuses (full) and a lease still holds a few tokens: it started a
// refresh at once (start, not kick), past the backoff the last failure
// set, so every such Wait sent the full cluster an Acquire.
func TestWaitShortOfHeldTokensKeepsTheBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		l := leasedThenFull(t, f, client.FailClosed)
		if got := l.State(); got != client.StateLeased {
			t.Fatalf("State after the failed refresh = %v, want %v (tokens still held)", got, client.StateLeased)
		}

		failed := len(f.acquires())
		ctx, cancel := context.WithTimeout(t.Context(), time.Second) // within fullBackoff's least, 2.5s
		err := l.WaitN(ctx, 100)
		cancel()
		// It gave up on a full cluster, as a Wait holding nothing does.
		if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, transport.ErrFull) || !errors.Is(err, client.ErrUnavailable) {
			t.Fatalf("WaitN past what is held = %v, want DeadlineExceeded, ErrFull and ErrUnavailable", err)
		}
		if n := len(f.acquires()) - failed; n != 0 {
			t.Errorf("WaitN within the backoff of a full cluster's refusal sent %d Acquires, want 0", n)
		}

		// With room again, a Wait that nothing else wakes asks once the
		// backoff ends, and is admitted.
		f.set(func(f *fakeCluster) { f.mu.full = false })
		start := time.Now()
		ctx, cancel = context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		if err := l.WaitN(ctx, 50); err != nil {
			t.Fatalf("WaitN once the cluster has room = %v, want nil", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("WaitN once the cluster has room took %v, want at most the rest of the backoff", d)
		}
	})
}

// fullReason is what the fake cluster says, as a node does, when it refuses
// a new key at --max-keys.
const fullReason = "cluster full: the cluster holds 2000000 keys"

// TestFullClusterErrorLeadsWithFull is the regression test of a fail-closed
// Wait that gave up on a full cluster reading "leasehold: cluster
// unreachable and no lease left (key ...)", which sent its reader looking
// for a network fault; the cap and its flag came last. It now leads with
// the cluster's answer, and still matches ErrUnavailable (documented: the
// failure policy decided), the *transport.FullError and the caller's error.
// No warning logged about it says unreachable either (the fallback's did).
func TestFullClusterErrorLeadsWithFull(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		f.set(func(f *fakeCluster) { f.mu.full = true })
		var logs testlog.Buffer
		c := f.dial(t, client.WithFailurePolicy(client.FailClosed), client.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
		l := c.Limiter("k", client.Limit{Rate: 100, Per: time.Second})
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		err := l.Wait(ctx)
		var fe *transport.FullError
		if !errors.As(err, &fe) || !errors.Is(err, transport.ErrFull) || !errors.Is(err, client.ErrUnavailable) ||
			!errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Wait = %v, want a *transport.FullError matching ErrUnavailable and DeadlineExceeded", err)
		}
		msg := err.Error()
		if want := `leasehold: key "k": ` + fullReason; !strings.HasPrefix(msg, want) {
			t.Errorf("Wait = %q, want it to begin %q", msg, want)
		}
		if !strings.Contains(msg, "--max-keys") || strings.Contains(msg, "unreachable") {
			t.Errorf("Wait = %q, want it to name --max-keys and not say unreachable", msg)
		}
		if s := logs.String(); !strings.Contains(s, "cluster is full") || !strings.Contains(s, "--max-keys") ||
			strings.Contains(s, "unreachable") {
			t.Errorf("logged, with the cluster full:\n%s\nwant it to say full, name --max-keys and not say unreachable", s)
		}
	})
}

// TestBudgetGivenUpOnAFullClusterMatchesErrFull is the regression test of a
// Budget's Reserve that gave up on a full cluster matching ErrUnavailable
// but not transport.ErrFull, where a Limiter's Wait matched both (doc.go):
// a caller could not tell a full cluster from an outage. Both ways a
// Reserve gives up: with a rule's failure policy waiting for the cluster
// (fail closed, refused at once), and waiting for the cluster's answer
// while it is slow.
func TestBudgetGivenUpOnAFullClusterMatchesErrFull(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		f.set(func(f *fakeCluster) { f.mu.full = true })
		c := f.dial(t, client.WithFailurePolicy(client.FailClosed))
		b := client.BudgetLeasingForTest(c.Budget("openai:org-7:gpt-4.1", bigRules()...))
		// What the README says a Reserve that gives up reads.
		check := func(what string, err error, prefix, suffix string) {
			t.Helper()
			if !errors.Is(err, transport.ErrFull) || !errors.Is(err, client.ErrUnavailable) ||
				!errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("%s: Reserve = %v, want it to match transport.ErrFull, ErrUnavailable and DeadlineExceeded", what, err)
			}
			if msg := err.Error(); !strings.HasPrefix(msg, prefix) || !strings.HasSuffix(msg, suffix) ||
				strings.Contains(msg, "unreachable") {
				t.Errorf("%s: Reserve = %q, want it to begin %q, end %q and not say unreachable", what, msg, prefix, suffix)
			}
		}
		// The first Reserve is refused (full) and waits for the cluster,
		// failing closed, until its deadline: the *RuleError of the rule
		// whose policy refused.
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		_, err := b.Reserve(ctx, call)
		cancel()
		var re *client.RuleError
		if !errors.As(err, &re) {
			t.Errorf("failing closed: Reserve = %v, want a *client.RuleError", err)
		}
		check("failing closed", err, "leasehold: "+fullReason,
			`; gave up waiting for room: context deadline exceeded: rule requests ("openai:org-7:gpt-4.1/requests")`)

		// Past the backoff, the next Reserve asks again, and gives up
		// while the cluster holds its answer.
		time.Sleep(10 * time.Second)
		release := f.holdAcquires()
		defer release()
		ctx, cancel = context.WithTimeout(t.Context(), time.Second)
		_, err = b.Reserve(ctx, call)
		cancel()
		check("waiting for an answer", err, `leasehold: budget "openai:org-7:gpt-4.1": `+fullReason,
			"; gave up waiting for room: context deadline exceeded")
	})
}

// TestBudgetSlotBacksOffFromAFullCluster is the regression test of a
// Budget's InFlight slot asking a full cluster again after an outage's
// backoff (at most a second) where its token rules, as a Limiter, wait
// about 5 s: a fail-closed Reserve sent an Acquire a second or more often.
func TestBudgetSlotBacksOffFromAFullCluster(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		f.set(func(f *fakeCluster) { f.mu.full = true })
		c := f.dial(t, client.WithFailurePolicy(client.FailClosed))
		b := c.Budget("openai:org-7:gpt-4.1", client.Rule{Counts: client.InFlight, Limit: client.Limit{Rate: 5}})
		const waited = 30 * time.Second
		ctx, cancel := context.WithTimeout(t.Context(), waited)
		defer cancel()
		if _, err := b.Reserve(ctx, client.Cost{}); !errors.Is(err, transport.ErrFull) {
			t.Fatalf("Reserve = %v, want transport.ErrFull", err)
		}
		// At most one Acquire per 2.5s (half of fullBackoff), and the
		// first at once.
		if n, most := len(f.acquires()), int(waited/(2500*time.Millisecond))+1; n > most {
			t.Errorf("%d Acquires to a full cluster in %v, want at most %d", n, waited, most)
		}
	})
}

// A fail-open Wait for more than the leases still hold, while the cluster
// refuses (full), is not in fallback: the policy decides once no lease
// holds a token. Given up before that, it returns ErrUnavailable (as
// documented: no lease was left to cover it, and the policy was not asked);
// waiting past the lease's end, FailOpen admits it.
func TestFailOpenWaitShortOfHeldTokens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		l := leasedThenFull(t, f, client.FailOpen)
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		err := l.WaitN(ctx, 100)
		cancel()
		if !errors.Is(err, client.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("WaitN past what is held, given up within the lease = %v, want ErrUnavailable and DeadlineExceeded", err)
		}
		ctx, cancel = context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		if err := l.WaitN(ctx, 100); err != nil {
			t.Fatalf("WaitN past what is held, past the lease's end = %v, want nil (FailOpen)", err)
		}
		if got := l.State(); got != client.StateFallback {
			t.Errorf("State after = %v, want %v", got, client.StateFallback)
		}
	})
}

// leasedThenFull dials f with policy and returns a leasing Limiter that
// took a lease, then spent from it until a refresh started and failed on
// the cluster, now full: it believes the cluster unreachable and still
// holds the lease's last tokens. Inside a synctest bubble.
func leasedThenFull(t *testing.T, f *fakeCluster, policy client.FailMode) *client.Limiter {
	t.Helper()
	c := f.dial(t, client.WithFailurePolicy(policy))
	l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: 100, Per: time.Second}))
	if !l.Allow() {
		t.Fatal("first Allow = false, want true")
	}
	synctest.Wait()
	f.set(func(f *fakeCluster) { f.mu.full = true })
	before := len(f.acquires())
	for len(f.acquires()) == before {
		if !l.Allow() {
			t.Fatal("Allow on the first lease = false before a refresh started")
		}
		synctest.Wait()
	}
	return l
}
