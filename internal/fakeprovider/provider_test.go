package fakeprovider

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

func newProvider(t *testing.T, change func(*Config)) *Provider {
	t.Helper()
	cfg := DefaultConfig()
	if change != nil {
		change(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// post sends body to path through rt and returns the response with its body read.
func post(t *testing.T, rt http.RoundTripper, url, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

const mem = "http://fake.test"

const chatBody = `{"model":"m","max_tokens":100,"messages":[{"role":"user","content":"hello there"}]}`

// TestAdmissionCountsMaxTokens: admission takes input + max_tokens from the
// token bucket; the response refunds the unused output; a refused request
// gets OpenAI's 429 headers with the wait until it fits.
func TestAdmissionCountsMaxTokens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newProvider(t, func(c *Config) {
			c.Default = Limits{RequestsPerMinute: 60, TokensPerMinute: 6000}
			c.OutputTokens = func(int64) int64 { return 40 }
		})
		rt := Transport(p)
		input := CountInputTokens([]byte(chatBody))
		resp, body := post(t, rt, mem+"/v1/chat/completions", chatBody)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		// Headers are written at admission: input + 100 taken.
		if got, want := resp.Header.Get("X-Ratelimit-Remaining-Tokens"), itoa(6000-input-100); got != want {
			t.Errorf("remaining tokens %s, want %s", got, want)
		}
		if got := resp.Header.Get("X-Ratelimit-Remaining-Requests"); got != "59" {
			t.Errorf("remaining requests %s, want 59", got)
		}
		if got := resp.Header.Get("X-Ratelimit-Reset-Requests"); got != "1s" {
			t.Errorf("reset requests %q, want 1s", got)
		}
		s := p.Stats()
		if s.ChargedTokens != input+40 || s.InputTokens != input || s.OutputTokens != 40 {
			t.Errorf("stats %+v, want charged %d (refunded to the actual output)", s, input+40)
		}

		// Drain the tokens: the next request waits for input + 100 to refill.
		p.Spend("m", 0, 6000, 0)
		resp, _ = post(t, rt, mem+"/v1/chat/completions", chatBody)
		if resp.StatusCode != 429 {
			t.Fatalf("status %d after the outside spender drained the bucket, want 429", resp.StatusCode)
		}
		wantMs := (input + 100) * 10 // 100 tokens a second
		if got := resp.Header.Get("Retry-After-Ms"); got != itoa(wantMs) {
			t.Errorf("retry-after-ms %s, want %d", got, wantMs)
		}
		if resp.Header.Get("Retry-After") != itoa((wantMs+999)/1000) || resp.Header.Get("X-Should-Retry") != "true" {
			t.Errorf("429 headers %v", resp.Header)
		}
		if got := resp.Header.Get("X-Ratelimit-Reset-Tokens"); got != "1m0s" {
			t.Errorf("reset tokens %q, want 1m0s", got)
		}
		time.Sleep(time.Duration(wantMs) * time.Millisecond)
		if resp, _ = post(t, rt, mem+"/v1/chat/completions", chatBody); resp.StatusCode != 200 {
			t.Errorf("status %d after the retry-after, want 200", resp.StatusCode)
		}
		if s := p.Stats(); s.Requests != 3 || s.RateLimited != 1 || s.Served != 2 {
			t.Errorf("stats %+v", s)
		}
	})
}

// TestAnthropicHeadersAndNeverFits: Anthropic's header family with RFC 3339
// resets, and a request larger than a bucket gets x-should-retry: false.
func TestAnthropicHeadersAndNeverFits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newProvider(t, func(c *Config) {
			c.Default = Limits{RequestsPerMinute: 50, InputTokensPerMinute: 1000, OutputTokensPerMinute: 200}
		})
		rt := Transport(p)
		body := `{"model":"c","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}`
		resp, _ := post(t, rt, mem+"/v1/messages", body)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if got := resp.Header.Get("Anthropic-Ratelimit-Output-Tokens-Remaining"); got != "100" {
			t.Errorf("output remaining %s, want 100", got)
		}
		reset, err := time.Parse(time.RFC3339, resp.Header.Get("Anthropic-Ratelimit-Output-Tokens-Reset"))
		if err != nil || time.Until(reset) != 30*time.Second {
			t.Errorf("output reset %v (%v), want 30s from now", reset, err)
		}
		if resp.Header.Get("X-Ratelimit-Remaining-Requests") != "" {
			t.Error("OpenAI headers on an Anthropic response")
		}
		resp, _ = post(t, rt, mem+"/v1/messages", `{"model":"c","max_tokens":300,"messages":[]}`)
		if resp.StatusCode != 429 || resp.Header.Get("X-Should-Retry") != "false" {
			t.Errorf("a request over the output limit: %d %v, want 429 with x-should-retry false", resp.StatusCode, resp.Header)
		}
		resp, _ = post(t, rt, mem+"/v1/messages", `{"model":"c","messages":[]}`)
		if resp.StatusCode != 400 {
			t.Errorf("messages without max_tokens: %d, want 400", resp.StatusCode)
		}
	})
}

// TestChatStreamUsageOnlyWhenAsked: the usage chunk comes only with
// stream_options.include_usage, as on OpenAI.
func TestChatStreamUsageOnlyWhenAsked(t *testing.T) {
	p := newProvider(t, nil)
	srv := httptest.NewServer(p)
	defer srv.Close()
	for _, include := range []bool{false, true} {
		body := `{"model":"m","max_tokens":20,"stream":true,"messages":[]`
		if include {
			body += `,"stream_options":{"include_usage":true}`
		}
		_, out := post(t, srv.Client().Transport, srv.URL+"/v1/chat/completions", body+"}")
		if got := strings.Contains(out, `"usage":{`); got != include {
			t.Errorf("include_usage %v: usage chunk present %v:\n%s", include, got, out)
		}
		if !strings.HasSuffix(out, "data: [DONE]\n\n") {
			t.Errorf("stream does not end with [DONE]:\n%s", out)
		}
	}
}

func TestValidate(t *testing.T) {
	c := Config{Default: Limits{RequestsPerMinute: -1}, ChunkTokens: 0, DefaultMaxTokens: 0, Latency: -1}
	err := c.Validate()
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"negative limit", "DefaultMaxTokens", "ChunkTokens", "Latency"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s: %v", want, err)
		}
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// An outside spender billed after its calls ran leaves the buckets owing:
// nothing is admitted until the debt is repaid, each refusal says to wait
// at least that long, and then calls are admitted again.
func TestExhaustRefusesForItsDuration(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newProvider(t, func(c *Config) { c.Default = Limits{RequestsPerMinute: 600, TokensPerMinute: 60_000} })
		rt := Transport(p)
		p.Exhaust("m", 3*time.Second)
		resp, _ := post(t, rt, mem+"/v1/chat/completions", chatBody)
		ms, _ := strconv.Atoi(resp.Header.Get("Retry-After-Ms"))
		if resp.StatusCode != http.StatusTooManyRequests || ms < 3000 || ms > 3200 {
			t.Fatalf("status %d retry-after-ms %d, want 429 and about 3s", resp.StatusCode, ms)
		}
		if got := resp.Header.Get("X-Ratelimit-Remaining-Tokens"); got != "0" {
			t.Errorf("remaining tokens %q, want 0", got)
		}
		time.Sleep(time.Duration(ms) * time.Millisecond)
		if resp, body := post(t, rt, mem+"/v1/chat/completions", chatBody); resp.StatusCode != http.StatusOK {
			t.Fatalf("after the wait: %d %s", resp.StatusCode, body)
		}
	})
}
