package guard_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client/guard"
	"github.com/leasehold/leasehold/client/guard/guardtest"
	"github.com/leasehold/leasehold/internal/fakeprovider"
)

const memHost = "openai.test"

// breakerConfig: one attempt a call, so each call is one breaker sample;
// three failures in a row open the breaker for a minute.
func breakerConfig(c *guard.Config) {
	c.MaxAttempts = 1
	c.Breaker = guard.BreakerConfig{ConsecutiveFailures: 3, OpenFor: time.Minute, HalfOpenProbes: 1}
	c.ResponseHeaderTimeout = 5 * time.Second
}

func call(g http.RoundTripper) error {
	_, err := openAI(g, memBase).Chat.Completions.New(context.Background(), chatParams())
	return err
}

// TestBreakerOpensOn5xxAndTimeouts: three 5xx, or three attempts with no
// headers within ResponseHeaderTimeout, open the breaker; the next call
// fails fast with ErrBreakerOpen without reaching the provider or the
// budget; after OpenFor a probe that succeeds closes it.
func TestBreakerOpensOn5xxAndTimeouts(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault fakeprovider.Fault
	}{
		{"500", fakeprovider.Fault{Kind: fakeprovider.FaultStatus, Status: http.StatusInternalServerError}},
		{"503", fakeprovider.Fault{Kind: fakeprovider.FaultStatus, Status: http.StatusServiceUnavailable}},
		{"timeout", fakeprovider.Fault{Kind: fakeprovider.FaultHang}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fake := newFake(t, nil)
				fake.Inject(tc.fault, tc.fault, tc.fault)
				budget := unlimited()
				g := newGuard(t, fakeprovider.Transport(fake), budget, breakerConfig)
				for i := range 3 {
					err := call(g)
					if err == nil {
						t.Fatalf("call %d succeeded through a fault", i)
					}
					if tc.fault.Kind == fakeprovider.FaultHang && !errors.Is(err, guard.ErrResponseTimeout) {
						t.Fatalf("call %d: %v, want ErrResponseTimeout", i, err)
					}
				}
				if st := g.State(memHost, gptModel); st.Breaker != guard.BreakerOpen {
					t.Fatalf("breaker %v after 3 failures, want open", st.Breaker)
				}
				err := call(g)
				var open *guard.BreakerOpenError
				if !errors.Is(err, guard.ErrBreakerOpen) || !errors.As(err, &open) || open.Model != gptModel {
					t.Fatalf("call on an open breaker: %v, want a BreakerOpenError for %s", err, gptModel)
				}
				if fs := fake.Stats(); fs.Requests != 3 {
					t.Errorf("provider saw %d requests, want 3: an open breaker sends nothing", fs.Requests)
				}
				if s := budget.Stats(); s.Reserved != 3 {
					t.Errorf("reserved %d, want 3: an open breaker reserves nothing", s.Reserved)
				}

				time.Sleep(time.Minute + time.Millisecond) // synctest: fake time; gobreaker half-opens after OpenFor
				if err := call(g); err != nil {
					t.Fatalf("half-open probe: %v", err)
				}
				if st := g.State(memHost, gptModel); st.Breaker != guard.BreakerClosed {
					t.Errorf("breaker %v after a good probe, want closed", st.Breaker)
				}
				checkEndedOnce(t, budget)
			})
		})
	}
}

// TestBreakerIgnores429sAndCancels: a provider answering 429 is out of
// quota, not ill; a caller cancelling is not the provider's fault. Neither
// opens the breaker, however many there are.
func TestBreakerIgnores429sAndCancels(t *testing.T) {
	t.Run("429", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			fake := newFake(t, func(c *fakeprovider.Config) {
				c.Default = fakeprovider.Limits{RequestsPerMinute: 1}
			})
			// Unguarded (no budget to block), so every call after the
			// first meets the provider's 429.
			g := newGuard(t, fakeprovider.Transport(fake), nil, breakerConfig)
			for range 10 {
				_ = call(g)
			}
			if fs := fake.Stats(); fs.RateLimited != 9 {
				t.Fatalf("provider answered %d 429s, want 9", fs.RateLimited)
			}
			if st := g.State(memHost, gptModel); st.Breaker != guard.BreakerClosed {
				t.Errorf("breaker %v after 429s, want closed", st.Breaker)
			}
		})
	})
	t.Run("cancelled", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			fake := newFake(t, nil)
			for range 10 {
				fake.Inject(fakeprovider.Fault{Kind: fakeprovider.FaultHang})
			}
			budget := unlimited()
			g := newGuard(t, fakeprovider.Transport(fake), budget, breakerConfig)
			for range 10 {
				ctx, cancel := context.WithCancel(context.Background())
				time.AfterFunc(time.Second, cancel)
				if _, err := openAI(g, memBase).Chat.Completions.New(ctx, chatParams()); !errors.Is(err, context.Canceled) {
					t.Fatalf("cancelled call: %v", err)
				}
				cancel()
			}
			if st := g.State(memHost, gptModel); st.Breaker != guard.BreakerClosed {
				t.Errorf("breaker %v after cancelled calls, want closed", st.Breaker)
			}
			checkEndedOnce(t, budget)
		})
	})
}

// hosts routes in-memory requests by host.
type hosts map[string]http.Handler

func (h hosts) RoundTrip(r *http.Request) (*http.Response, error) {
	return fakeprovider.Transport(h[r.URL.Host]).RoundTrip(r)
}

// canarySetup: a primary that always fails, a fallback, a guard whose
// breaker opens at the first failure and stays open, a canary of 4 calls
// at half the refused traffic (alternating, by the rand seam), and one
// budget for each side.
func canarySetup(t *testing.T, fallbackCfg func(*fakeprovider.Config)) (*guard.Guard, *fakeprovider.Provider, *guardtest.Budget) {
	primary := newFake(t, nil)
	for range 1000 {
		primary.Inject(fakeprovider.Fault{Kind: fakeprovider.FaultStatus, Status: http.StatusBadGateway})
	}
	fallback := newFake(t, fallbackCfg)
	primaryBudget, fallbackBudget := unlimited(), unlimited()
	g := newGuard(t, hosts{memHost: primary, "fallback.test": fallback}, nil, func(c *guard.Config) {
		c.MaxAttempts = 1
		c.Breaker = guard.BreakerConfig{ConsecutiveFailures: 1, OpenFor: time.Hour}
		c.Fallback = guard.FallbackConfig{URL: "http://fallback.test", CanaryShare: 0.5, CanarySamples: 4,
			MaxErrorRate: 0.25, MaxP99: 2 * time.Second, RollbackFor: 10 * time.Minute}
		c.Budget = func(call guard.Call) guard.Budget {
			if call.Fallback {
				if call.Host != "fallback.test" {
					t.Errorf("fallback call to host %q", call.Host)
				}
				return fallbackBudget
			}
			return primaryBudget
		}
	})
	n := 0
	guard.SetRand(g, func() float64 { // 0.25, 0.75, 0.25…: every other call is under the share
		n++
		return map[bool]float64{true: 0.25, false: 0.75}[n%2 == 1]
	})
	if err := call(g); err == nil {
		t.Fatal("the primary served")
	}
	return g, fallback, fallbackBudget
}

// TestFallbackCanaryPromotesAndRollsBack: with the primary's breaker open,
// the fallback takes half of the calls until 4 succeed, then all of them;
// when its failures exceed the error rate it is rolled back (calls fail fast)
// and tried again as a canary after RollbackFor.
func TestFallbackCanaryPromotesAndRollsBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, fallback, fallbackBudget := canarySetup(t, nil)
		state := func() guard.FallbackState { return g.State(memHost, gptModel).Fallback }

		// Calls alternate between the fallback and a refusal; the 7th is
		// the fallback's 4th success.
		served, refused := 0, 0
		for range 7 {
			switch err := call(g); {
			case err == nil:
				served++
			case errors.Is(err, guard.ErrBreakerOpen):
				refused++
			default:
				t.Fatal(err)
			}
		}
		if served != 4 || refused != 3 || state() != guard.FallbackPromoted {
			t.Fatalf("canary: %d served, %d refused, fallback %v; want 4, 3, promoted", served, refused, state())
		}
		for range 4 {
			if err := call(g); err != nil {
				t.Fatalf("promoted fallback: %v", err)
			}
		}
		if s := fallbackBudget.Stats(); s.Settled != 8 {
			t.Errorf("fallback budget settled %d calls, want 8", s.Settled)
		}

		// Two failures in a window of 4 exceed 25%: roll back.
		fallback.Inject(fakeprovider.Fault{Kind: fakeprovider.FaultStatus, Status: 500},
			fakeprovider.Fault{Kind: fakeprovider.FaultStatus, Status: 500})
		_ = call(g)
		if state() != guard.FallbackPromoted {
			t.Fatalf("fallback %v after one failure, want still promoted", state())
		}
		_ = call(g)
		if state() != guard.FallbackRolledBack {
			t.Fatalf("fallback %v after two failures, want rolled back", state())
		}
		before := fallback.Stats().Requests
		if err := call(g); !errors.Is(err, guard.ErrBreakerOpen) {
			t.Fatalf("rolled back: %v, want ErrBreakerOpen", err)
		}
		if fallback.Stats().Requests != before {
			t.Error("a rolled-back fallback got a call")
		}
		time.Sleep(10 * time.Minute)
		for range 2 {
			_ = call(g)
		}
		if state() != guard.FallbackCanary || fallback.Stats().Requests != before+1 {
			t.Errorf("after RollbackFor: fallback %v with %d more calls, want a canary with 1",
				state(), fallback.Stats().Requests-before)
		}
		checkEndedOnce(t, fallbackBudget)
	})
}

// TestFallbackRollsBackOnP99: a fallback slower than MaxP99 is rolled back
// on its first call.
func TestFallbackRollsBackOnP99(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, _, _ := canarySetup(t, func(c *fakeprovider.Config) { c.Latency = 3 * time.Second })
		if err := call(g); err != nil {
			t.Fatal(err) // 0.25 < share: to the fallback, served slowly
		}
		if st := g.State(memHost, gptModel).Fallback; st != guard.FallbackRolledBack {
			t.Errorf("fallback %v after a 3s call over a 2s p99, want rolled back", st)
		}
	})
}
