package guard_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/leasehold/leasehold/client/guard"
	"github.com/leasehold/leasehold/client/guard/guardtest"
	"github.com/leasehold/leasehold/internal/fakeprovider"
)

const memBase = "http://openai.test"

// slowStreams makes a fake whose replies are 50 one-token chunks 100ms apart.
func slowStreams(c *fakeprovider.Config) {
	c.ChunkTokens = 1
	c.ChunkDelay = 100 * time.Millisecond
	c.OutputTokens = func(int64) int64 { return 50 }
}

func chatParams() openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model: gptModel, MaxTokens: openai.Int(300),
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(prompt)},
	}
}

// rawChat posts a streaming chat request with the plain http.Client.
func rawChat(ctx context.Context, t *testing.T, rt http.RoundTripper, stream bool) *http.Response {
	t.Helper()
	body := `{"model":"` + gptModel + `","max_tokens":300,"stream":` + map[bool]string{true: "true", false: "false"}[stream] +
		`,"messages":[{"role":"user","content":"` + prompt + `"}]}`
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, memBase+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// TestCancelledStreamDoesNotLeakItsInFlightSlotForGood is LiteLLM #27955's
// symptom ("a cancelled stream leaks its in-flight slot for good and the key
// answers 429 forever"): with one in-flight slot, a stream abandoned
// mid-way — its context cancelled, its body closed early, or its context
// cancelled with the body never closed — must give the slot back, settled at
// what it reserved, so the next call gets through.
func TestCancelledStreamDoesNotLeakItsInFlightSlotForGood(t *testing.T) {
	for _, tc := range []struct {
		name    string
		abandon func(t *testing.T, ctx context.Context, cancel func(), rt http.RoundTripper)
	}{
		{"sdk-context-cancelled", func(t *testing.T, ctx context.Context, cancel func(), rt http.RoundTripper) {
			s := openAI(rt, memBase).Chat.Completions.NewStreaming(ctx, chatParams())
			defer s.Close()
			for i := 0; i < 3 && s.Next(); i++ {
			}
			cancel()
			for s.Next() {
			}
			if !errors.Is(s.Err(), context.Canceled) {
				t.Errorf("stream error %v, want context.Canceled", s.Err())
			}
		}},
		{"sdk-closed-early", func(t *testing.T, ctx context.Context, _ func(), rt http.RoundTripper) {
			s := openAI(rt, memBase).Chat.Completions.NewStreaming(ctx, chatParams())
			for i := 0; i < 3 && s.Next(); i++ {
			}
			s.Close()
		}},
		{"context-cancelled-body-never-closed", func(t *testing.T, ctx context.Context, cancel func(), rt http.RoundTripper) {
			resp := rawChat(ctx, t, rt, true)
			if _, err := io.ReadFull(resp.Body, make([]byte, 64)); err != nil {
				t.Fatal(err)
			}
			cancel() // and never touch resp.Body again
		}},
		{"body-never-read-closed", func(t *testing.T, ctx context.Context, _ func(), rt http.RoundTripper) {
			rawChat(ctx, t, rt, true).Body.Close()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fake := newFake(t, slowStreams)
				budget := &recordingBudget{Budget: guardtest.New(guardtest.Limits{InFlight: 1})}
				g := newGuard(t, fakeprovider.Transport(fake), budget, nil)

				ctx, cancel := context.WithCancel(context.Background())
				tc.abandon(t, ctx, cancel, g)
				cancel()
				synctest.Wait()

				s := budget.Stats()
				if s.InFlight != 0 {
					t.Fatalf("the abandoned stream still holds its in-flight slot (%+v)", s)
				}
				if est := budget.estimates(); len(s.Settles) != 1 || s.Settles[0] != est[0] {
					t.Errorf("settles %+v, want one at the reservation %+v", s.Settles, est[0])
				}

				// The slot is free: the next call gets it at once.
				next, stop := context.WithTimeout(context.Background(), time.Second)
				defer stop()
				if _, err := openAI(g, memBase).Chat.Completions.New(next, chatParams()); err != nil {
					t.Fatalf("the next call after the abandoned stream: %v", err)
				}
				checkEndedOnce(t, budget.Budget)
			})
		})
	}
}

// TestStreamCutShortSettlesAtReservation: a stream (or JSON body) the
// server cuts settles at what was reserved, not at the partial usage.
func TestStreamCutShortSettlesAtReservation(t *testing.T) {
	for _, stream := range []bool{true, false} {
		name := map[bool]string{true: "stream", false: "json"}[stream]
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fake := newFake(t, func(c *fakeprovider.Config) { c.ChunkTokens = 1 })
				fake.Inject(fakeprovider.Fault{Kind: fakeprovider.FaultCut, After: 3})
				budget := &recordingBudget{Budget: unlimited()}
				g := newGuard(t, fakeprovider.Transport(fake), budget, nil)

				resp := rawChat(context.Background(), t, g, stream)
				_, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("read error %v, want the cut", err)
				}
				synctest.Wait()
				s := budget.Stats()
				if est := budget.estimates(); len(s.Settles) != 1 || s.Settles[0] != est[0] {
					t.Errorf("settles %+v, want one at the reservation %+v", s.Settles, est)
				}
				checkEndedOnce(t, budget.Budget)
			})
		})
	}
}

// TestSettleChargesOnce: a body read to its end, closed twice and then
// cancelled settles once; a call retried after a 500 cancels the failed
// attempt's reservation and charges the served one once.
func TestSettleChargesOnce(t *testing.T) {
	t.Run("eof-close-close-cancel", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			fake := newFake(t, nil)
			budget := unlimited()
			g := newGuard(t, fakeprovider.Transport(fake), budget, nil)
			ctx, cancel := context.WithCancel(context.Background())
			resp := rawChat(ctx, t, g, true)
			if _, err := io.ReadAll(resp.Body); err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			resp.Body.Close()
			cancel()
			synctest.Wait()
			fs := fake.Stats()
			want := guard.Cost{Requests: 1, InputTokens: fs.InputTokens, OutputTokens: fs.OutputTokens}
			if s := budget.Stats(); s.Settled != 1 || s.Charged != want {
				t.Errorf("settled %d charged %+v, want 1 and %+v", s.Settled, s.Charged, want)
			}
			checkEndedOnce(t, budget)
		})
	})
	t.Run("retried-after-500", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			fake := newFake(t, nil)
			fake.Inject(fakeprovider.Fault{Kind: fakeprovider.FaultStatus, Status: http.StatusInternalServerError})
			budget := unlimited()
			g := newGuard(t, fakeprovider.Transport(fake), budget, nil)
			resp, err := openAI(g, memBase).Chat.Completions.New(context.Background(), chatParams())
			if err != nil {
				t.Fatal(err)
			}
			want := guard.Cost{Requests: 1, InputTokens: resp.Usage.PromptTokens, OutputTokens: resp.Usage.CompletionTokens}
			s := budget.Stats()
			if s.Reserved != 2 || s.Cancelled != 1 || s.Settled != 1 || s.Charged != want {
				t.Errorf("reserved %d cancelled %d settled %d charged %+v; want 2, 1, 1, %+v",
					s.Reserved, s.Cancelled, s.Settled, s.Charged, want)
			}
			if fs := fake.Stats(); fs.Requests != 2 || fs.Served != 1 {
				t.Errorf("provider saw %d requests and served %d, want 2 and 1", fs.Requests, fs.Served)
			}
			checkEndedOnce(t, budget)
		})
	})
}

// TestGuardtestCatchesASettleAppliedTwice shows the fake budget's checker
// can fail: a reservation settled twice is counted, and charged once.
func TestGuardtestCatchesASettleAppliedTwice(t *testing.T) {
	b := unlimited()
	r, err := b.Reserve(context.Background(), guard.Cost{Requests: 1, InputTokens: 10})
	if err != nil {
		t.Fatal(err)
	}
	actual := guard.Cost{Requests: 1, InputTokens: 7}
	if err := r.Settle(context.Background(), actual); err != nil {
		t.Fatal(err)
	}
	if err := r.Settle(context.Background(), actual); !errors.Is(err, guardtest.ErrEndedTwice) {
		t.Fatalf("second settle: %v, want ErrEndedTwice", err)
	}
	if err := r.Cancel(); !errors.Is(err, guardtest.ErrEndedTwice) {
		t.Fatalf("cancel after settle: %v, want ErrEndedTwice", err)
	}
	if s := b.Stats(); s.EndedTwice != 2 || s.Charged != actual {
		t.Fatalf("ended twice %d, charged %+v; want 2 and %+v", s.EndedTwice, s.Charged, actual)
	}
}

// TestKeepAliveDuringLongStream: a stream read for longer than
// KeepAliveEvery keeps its reservation alive.
func TestKeepAliveDuringLongStream(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := newFake(t, func(c *fakeprovider.Config) {
			c.ChunkTokens, c.ChunkDelay = 1, 10*time.Second
			c.OutputTokens = func(int64) int64 { return 7 }
		})
		budget := unlimited()
		g := newGuard(t, fakeprovider.Transport(fake), budget, func(c *guard.Config) { c.KeepAliveEvery = 25 * time.Second })
		resp := rawChat(context.Background(), t, g, true)
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		// 70s of stream, checked on reads: alive at 30s and 60s.
		if s := budget.Stats(); s.KeepAlives != 2 {
			t.Errorf("keep-alives %d, want 2", s.KeepAlives)
		}
		checkEndedOnce(t, budget)
	})
}

// TestIncludeUsageKeepsOtherStreamOptions: the guard adds include_usage to a
// chat stream's stream_options without dropping the caller's options.
func TestIncludeUsageKeepsOtherStreamOptions(t *testing.T) {
	var sent []byte
	rt := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		sent, _ = io.ReadAll(r.Body)
		return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"text/event-stream"}},
			Body: io.NopCloser(strings.NewReader("data: [DONE]\n\n")), Request: r}, nil
	})
	g := newGuard(t, rt, unlimited(), nil)
	body := `{"model":"m","stream":true,"stream_options":{"include_obfuscation":false},"messages":[]}`
	req, _ := http.NewRequest(http.MethodPost, memBase+"/v1/chat/completions", strings.NewReader(body))
	resp, err := g.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if !bytes.Contains(sent, []byte(`"stream_options":{"include_obfuscation":false,"include_usage":true}`)) {
		t.Errorf("sent %s", sent)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
