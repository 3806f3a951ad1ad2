package guard_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/google/go-cmp/cmp"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/responses"

	"github.com/leasehold/leasehold/client/guard"
	"github.com/leasehold/leasehold/internal/fakeprovider"
)

// sdkCall makes one call with a provider SDK through rt to base and returns
// the usage the SDK saw (zero if it saw none) and whether a usage-only chunk
// reached the caller.
type sdkCall func(t *testing.T, rt http.RoundTripper, base string) (usage guard.Cost, usageChunk bool)

func chatJSON(t *testing.T, rt http.RoundTripper, base string) (guard.Cost, bool) {
	resp, err := openAI(rt, base).Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
		Model: gptModel, MaxCompletionTokens: openai.Int(300),
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(prompt)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Choices) != 1 || resp.Choices[0].Message.Content == "" {
		t.Fatalf("choices = %+v", resp.Choices)
	}
	return guard.Cost{Requests: 1, InputTokens: resp.Usage.PromptTokens, OutputTokens: resp.Usage.CompletionTokens}, false
}

func chatStream(includeUsage bool) sdkCall {
	return func(t *testing.T, rt http.RoundTripper, base string) (guard.Cost, bool) {
		params := openai.ChatCompletionNewParams{
			Model: gptModel, MaxTokens: openai.Int(300),
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(prompt)},
		}
		if includeUsage {
			params.StreamOptions.IncludeUsage = openai.Bool(true)
		}
		s := openAI(rt, base).Chat.Completions.NewStreaming(context.Background(), params)
		defer s.Close()
		var usage guard.Cost
		usageChunk, text := false, ""
		for s.Next() {
			c := s.Current()
			if len(c.Choices) == 0 {
				usageChunk = true
			} else {
				text += c.Choices[0].Delta.Content
			}
			if c.Usage.TotalTokens > 0 {
				usage = guard.Cost{Requests: 1, InputTokens: c.Usage.PromptTokens, OutputTokens: c.Usage.CompletionTokens}
			}
		}
		if err := s.Err(); err != nil {
			t.Fatal(err)
		}
		if text == "" {
			t.Fatal("stream carried no text")
		}
		return usage, usageChunk
	}
}

func responsesJSON(t *testing.T, rt http.RoundTripper, base string) (guard.Cost, bool) {
	resp, err := openAI(rt, base).Responses.New(context.Background(), responses.ResponseNewParams{
		Model: gptModel, MaxOutputTokens: openai.Int(300),
		Input: responses.ResponseNewParamsInputUnion{OfString: openai.String(prompt)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.OutputText() == "" {
		t.Fatal("no output text")
	}
	return guard.Cost{Requests: 1, InputTokens: resp.Usage.InputTokens, OutputTokens: resp.Usage.OutputTokens}, false
}

func responsesStream(t *testing.T, rt http.RoundTripper, base string) (guard.Cost, bool) {
	s := openAI(rt, base).Responses.NewStreaming(context.Background(), responses.ResponseNewParams{
		Model: gptModel, MaxOutputTokens: openai.Int(300),
		Input: responses.ResponseNewParamsInputUnion{OfString: openai.String(prompt)},
	})
	defer s.Close()
	var usage guard.Cost
	for s.Next() {
		if ev := s.Current(); ev.Type == "response.completed" {
			u := ev.Response.Usage
			usage = guard.Cost{Requests: 1, InputTokens: u.InputTokens, OutputTokens: u.OutputTokens}
		}
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	return usage, false
}

func messagesJSON(t *testing.T, rt http.RoundTripper, base string) (guard.Cost, bool) {
	msg, err := claude(rt, base).Messages.New(context.Background(), anthropic.MessageNewParams{
		Model: claudeModel, MaxTokens: 300,
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock(prompt))},
	})
	if err != nil {
		t.Fatal(err)
	}
	return guard.Cost{Requests: 1, InputTokens: msg.Usage.InputTokens, OutputTokens: msg.Usage.OutputTokens}, false
}

func messagesStream(t *testing.T, rt http.RoundTripper, base string) (guard.Cost, bool) {
	s := claude(rt, base).Messages.NewStreaming(context.Background(), anthropic.MessageNewParams{
		Model: claudeModel, MaxTokens: 300,
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock(prompt))},
	})
	defer s.Close()
	var msg anthropic.Message
	for s.Next() {
		if err := msg.Accumulate(s.Current()); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	return guard.Cost{Requests: 1, InputTokens: msg.Usage.InputTokens, OutputTokens: msg.Usage.OutputTokens}, false
}

// TestSDKCallsSettleAtProviderUsage makes each kind of call with the
// provider's own SDK through the guard to the fake over HTTP, and checks the
// reservation was settled once at exactly the usage the provider reported,
// and that the estimate it reserved covered the input.
func TestSDKCallsSettleAtProviderUsage(t *testing.T) {
	for _, tc := range []struct {
		name  string
		model string
		call  sdkCall
		// sdkSeesUsage: the SDK's own view of usage must match too.
		sdkSeesUsage bool
		wantChunk    bool
	}{
		{"chat/json", gptModel, chatJSON, true, false},
		{"chat/stream", gptModel, chatStream(false), false, false},
		{"chat/stream-include-usage", gptModel, chatStream(true), true, true},
		{"responses/json", gptModel, responsesJSON, true, false},
		{"responses/stream", gptModel, responsesStream, true, false},
		{"messages/json", claudeModel, messagesJSON, true, false},
		{"messages/stream", claudeModel, messagesStream, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := newFake(t, nil)
			base := serve(t, fake)
			budget := unlimited()
			g := newGuard(t, http.DefaultTransport, budget, nil)

			sdkUsage, chunk := tc.call(t, g, base)

			fs := fake.ModelStats(tc.model)
			provider := guard.Cost{Requests: 1, InputTokens: fs.InputTokens, OutputTokens: fs.OutputTokens}
			if fs.Served != 1 {
				t.Fatalf("provider served %d calls, want 1", fs.Served)
			}
			s := budget.Stats()
			if diff := cmp.Diff([]guard.Cost{provider}, s.Settles); diff != "" {
				t.Errorf("settles differ from the provider's usage (-provider +settled):\n%s", diff)
			}
			if tc.sdkSeesUsage && sdkUsage != provider {
				t.Errorf("the SDK saw usage %+v, the provider counted %+v", sdkUsage, provider)
			}
			if chunk != tc.wantChunk {
				t.Errorf("usage-only chunk reached the caller: %v, want %v", chunk, tc.wantChunk)
			}
			if s.Reserved != 1 || s.Settled != 1 {
				t.Errorf("reserved %d settled %d, want 1 and 1", s.Reserved, s.Settled)
			}
			checkEndedOnce(t, budget)
		})
	}
}

// TestEstimateCoversProviderInput checks the default estimator errs high
// against the fake's tokenizer for each API's request shape.
func TestEstimateCoversProviderInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		call sdkCall
	}{
		{"chat", chatJSON}, {"responses", responsesJSON}, {"messages", messagesJSON},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := newFake(t, func(c *fakeprovider.Config) { c.OutputTokens = func(int64) int64 { return 1 } })
			budget := &recordingBudget{Budget: unlimited()}
			g := newGuard(t, http.DefaultTransport, budget, nil)
			tc.call(t, g, serve(t, fake))
			est := budget.estimates()
			fs := fake.Stats()
			if len(est) != 1 || est[0].InputTokens < fs.InputTokens || est[0].OutputTokens != 300 {
				t.Fatalf("estimates %+v, provider input %d and max output 300", est, fs.InputTokens)
			}
			t.Logf("estimated %d input tokens, provider counted %d", est[0].InputTokens, fs.InputTokens)
		})
	}
}

// TestConcurrentCallsChargeWhatTheProviderServed: 8 goroutines × 6 calls of
// every kind through one guard over HTTP; every reservation ends once and
// the budget is charged exactly the provider's usage, summed.
func TestConcurrentCallsChargeWhatTheProviderServed(t *testing.T) {
	fake := newFake(t, func(c *fakeprovider.Config) { c.Default = fakeprovider.Limits{} })
	base := serve(t, fake)
	budget := unlimited()
	g := newGuard(t, http.DefaultTransport, budget, nil)
	calls := []sdkCall{chatJSON, chatStream(false), chatStream(true), responsesJSON, responsesStream, messagesJSON, messagesStream}
	// Parallel subtests, so each worker may fail its test; the group
	// returns when all are done.
	t.Run("workers", func(t *testing.T) {
		for w := range 8 {
			t.Run(fmt.Sprint(w), func(t *testing.T) {
				t.Parallel()
				for i := range 6 {
					calls[(w+i)%len(calls)](t, g, base)
				}
			})
		}
	})
	fs := fake.Stats()
	want := guard.Cost{Requests: 48, InputTokens: fs.InputTokens, OutputTokens: fs.OutputTokens}
	if s := budget.Stats(); s.Charged != want || s.Settled != 48 {
		t.Errorf("charged %+v in %d settles, provider served %+v", s.Charged, s.Settled, want)
	}
	checkEndedOnce(t, budget)
}
