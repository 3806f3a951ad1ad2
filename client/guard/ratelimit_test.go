package guard_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	aoption "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/google/go-cmp/cmp"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/leasehold/leasehold/client/guard"
	"github.com/leasehold/leasehold/client/guard/guardtest"
	"github.com/leasehold/leasehold/internal/fakeprovider"
)

// refuser answers the first n requests with status and the headers head
// builds (given the time of the request), and sends the rest to next. It
// records when each request came.
type refuser struct {
	next   http.Handler
	n      int
	status int
	head   func(now time.Time) http.Header

	mu    sync.Mutex
	times []time.Time
}

func (f *refuser) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	now := time.Now()
	f.times = append(f.times, now)
	refuse := len(f.times) <= f.n
	f.mu.Unlock()
	if !refuse {
		f.next.ServeHTTP(w, r)
		return
	}
	for k, v := range f.head(now) {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(f.status)
	_, _ = w.Write([]byte(`{"error":{"message":"refused","type":"requests","code":"rate_limit_exceeded"}}`))
}

func (f *refuser) requests() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.times...)
}

func hdr(kv ...string) http.Header {
	h := make(http.Header)
	for i := 0; i < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

// TestProvider429BlocksTheBudget: each shape of a provider's 429 wait blocks
// the budget for that wait, and the guard retries after exactly that long,
// however long it is.
func TestProvider429BlocksTheBudget(t *testing.T) {
	for _, tc := range []struct {
		name string
		head func(now time.Time) http.Header
		want time.Duration
	}{
		{"retry-after-ms", func(time.Time) http.Header { return hdr("Retry-After-Ms", "1500", "Retry-After", "2") }, 1500 * time.Millisecond},
		{"retry-after-seconds", func(time.Time) http.Header { return hdr("Retry-After", "7") }, 7 * time.Second},
		{"retry-after-fraction", func(time.Time) http.Header { return hdr("Retry-After", "0.25") }, 250 * time.Millisecond},
		{"retry-after-http-date", func(now time.Time) http.Header {
			return hdr("Retry-After", now.Add(20*time.Second).UTC().Format(http.TimeFormat))
		}, 20 * time.Second},
		{"retry-after-ten-minutes-uncapped", func(time.Time) http.Header { return hdr("Retry-After", "600") }, 10 * time.Minute},
		{"openai-reset-of-the-exhausted-limit", func(time.Time) http.Header {
			return hdr("X-Ratelimit-Remaining-Requests", "10", "X-Ratelimit-Reset-Requests", "1s",
				"X-Ratelimit-Remaining-Tokens", "0", "X-Ratelimit-Reset-Tokens", "6m0s")
		}, 6 * time.Minute},
		{"openai-reset-milliseconds", func(time.Time) http.Header {
			return hdr("X-Ratelimit-Remaining-Requests", "0", "X-Ratelimit-Reset-Requests", "20ms")
		}, 20 * time.Millisecond},
		{"anthropic-reset-rfc3339", func(now time.Time) http.Header {
			return hdr("Anthropic-Ratelimit-Requests-Remaining", "5",
				"Anthropic-Ratelimit-Requests-Reset", now.Add(2*time.Second).UTC().Format(time.RFC3339),
				"Anthropic-Ratelimit-Output-Tokens-Remaining", "0",
				"Anthropic-Ratelimit-Output-Tokens-Reset", now.Add(45*time.Second).UTC().Format(time.RFC3339))
		}, 45 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fake := newFake(t, nil)
				ref := &refuser{next: fake, n: 1, status: http.StatusTooManyRequests, head: tc.head}
				budget := unlimited()
				g := newGuard(t, fakeprovider.Transport(ref), budget, nil)

				if _, err := openAI(g, memBase).Chat.Completions.New(context.Background(), chatParams()); err != nil {
					t.Fatal(err)
				}
				s := budget.Stats()
				if len(s.Blocks) != 1 || s.Blocks[0].Wait != tc.want {
					t.Fatalf("blocks %+v, want one of %v", s.Blocks, tc.want)
				}
				times := ref.requests()
				if len(times) != 2 || times[1].Sub(times[0]) != tc.want {
					t.Fatalf("requests at %v, want two, %v apart", times, tc.want)
				}
				if s.Cancelled != 1 || s.Settled != 1 {
					t.Errorf("cancelled %d settled %d, want 1 and 1: the refused attempt costs nothing", s.Cancelled, s.Settled)
				}
				checkEndedOnce(t, budget)
			})
		})
	}
}

// TestFakeProvider429: the fake's own 429 (a tiny TPM) blocks the budget
// for its retry-after-ms, after which the call fits and is served.
func TestFakeProvider429(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := newFake(t, func(c *fakeprovider.Config) {
			c.Default = fakeprovider.Limits{RequestsPerMinute: 1, TokensPerMinute: 100_000}
		})
		budget := unlimited()
		g := newGuard(t, fakeprovider.Transport(fake), budget, nil)
		client := openAI(g, memBase)
		start := time.Now()
		for range 2 {
			if _, err := client.Chat.Completions.New(context.Background(), chatParams()); err != nil {
				t.Fatal(err)
			}
		}
		// One request a minute: the second waits the minute out.
		if got := time.Since(start); got != time.Minute {
			t.Errorf("two calls took %v, want 1m", got)
		}
		s := budget.Stats()
		if len(s.Blocks) != 1 || s.Blocks[0].Wait != time.Minute {
			t.Errorf("blocks %+v, want one of 1m", s.Blocks)
		}
		if fs := fake.Stats(); fs.RateLimited != 1 || fs.Served != 2 {
			t.Errorf("provider: %d 429s, %d served; want 1 and 2", fs.RateLimited, fs.Served)
		}
		checkEndedOnce(t, budget)
	})
}

// TestShouldRetryFalseStopsRetries: x-should-retry: false on a 429 or a 503
// ends the call at the first attempt (the 429 still blocks the budget), and
// the SDK above, with its own retries on, does not retry either.
func TestShouldRetryFalseStopsRetries(t *testing.T) {
	for _, status := range []int{http.StatusTooManyRequests, http.StatusServiceUnavailable} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ref := &refuser{next: newFake(t, nil), n: 100, status: status,
					head: func(time.Time) http.Header { return hdr("Retry-After", "5", "X-Should-Retry", "false") }}
				budget := unlimited()
				g := newGuard(t, fakeprovider.Transport(ref), budget, nil)
				_, err := openAI(g, memBase, option.WithMaxRetries(2)).Chat.Completions.New(context.Background(), chatParams())
				var apiErr *openai.Error
				if !errors.As(err, &apiErr) || apiErr.StatusCode != status {
					t.Fatalf("error %v, want the provider's %d", err, status)
				}
				if n := len(ref.requests()); n != 1 {
					t.Errorf("%d requests, want 1", n)
				}
				s := budget.Stats()
				if wantBlocks := map[bool]int{true: 1, false: 0}[status == 429]; len(s.Blocks) != wantBlocks {
					t.Errorf("blocks %+v, want %d", s.Blocks, wantBlocks)
				}
				checkEndedOnce(t, budget)
			})
		})
	}
}

// TestSDKRetriesDoNotMultiplyTheGuards: with openai-go's and
// anthropic-sdk-go's own retries left on (2 each, Retry-After capped by the
// SDK), a provider that keeps answering 429 gets MaxAttempts requests, each
// after the whole wait, not MaxAttempts × 3: the guard marks the 429 it gives
// up on x-should-retry: false.
func TestSDKRetriesDoNotMultiplyTheGuards(t *testing.T) {
	for _, sdk := range []string{"openai-go", "anthropic-sdk-go"} {
		t.Run(sdk, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ref := &refuser{next: newFake(t, nil), n: 100, status: http.StatusTooManyRequests,
					head: func(time.Time) http.Header { return hdr("Retry-After", "20") }}
				budget := unlimited()
				g := newGuard(t, fakeprovider.Transport(ref), budget, func(c *guard.Config) { c.MaxAttempts = 3 })
				var err error
				if sdk == "openai-go" {
					_, err = openAI(g, memBase, option.WithMaxRetries(2)).Chat.Completions.New(context.Background(), chatParams())
				} else {
					_, err = claude(g, memBase).Messages.New(context.Background(), anthropic.MessageNewParams{
						Model: claudeModel, MaxTokens: 100,
						Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock(prompt))},
					}, aoption.WithMaxRetries(2))
				}
				if err == nil {
					t.Fatal("call succeeded against a provider that always refuses")
				}
				times := ref.requests()
				if len(times) != 3 {
					t.Fatalf("%d requests, want the guard's 3", len(times))
				}
				for i := 1; i < len(times); i++ {
					if d := times[i].Sub(times[i-1]); d != 20*time.Second {
						t.Errorf("request %d came %v after the one before, want the whole 20s", i, d)
					}
				}
				checkEndedOnce(t, budget)
			})
		})
	}
}

// TestRemainingHeadersLowerTheBudget: a successful response's remaining
// headers reach the budget, per dimension.
func TestRemainingHeadersLowerTheBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := newFake(t, func(c *fakeprovider.Config) {
			c.Default = fakeprovider.Limits{RequestsPerMinute: 100, TokensPerMinute: 10_000}
			c.OutputTokens = func(int64) int64 { return 300 }
		})
		budget := unlimited()
		g := newGuard(t, fakeprovider.Transport(fake), budget, nil)
		resp, err := openAI(g, memBase).Chat.Completions.New(context.Background(), chatParams())
		if err != nil {
			t.Fatal(err)
		}
		// The headers were written at admission: input + max_tokens taken.
		want := []guardtest.Lower{
			{Dim: guard.Requests, Remaining: 99, Reset: 600 * time.Millisecond},
			{Dim: guard.Tokens, Remaining: 10_000 - resp.Usage.PromptTokens - 300,
				Reset: time.Duration(float64(resp.Usage.PromptTokens+300) / 10_000 * float64(time.Minute)).Round(time.Millisecond)},
		}
		if diff := cmp.Diff(want, budget.Stats().Lowers); diff != "" {
			t.Errorf("lowers (-want +got):\n%s", diff)
		}
	})
}
