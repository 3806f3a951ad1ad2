package guard

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestRetryHint(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name   string
		h      http.Header
		want   time.Duration
		wantOK bool
	}{
		{"none", http.Header{}, 0, false},
		{"ms wins over seconds", http.Header{"Retry-After-Ms": {"120"}, "Retry-After": {"9"}}, 120 * time.Millisecond, true},
		{"bad ms falls to seconds", http.Header{"Retry-After-Ms": {"soon"}, "Retry-After": {"9"}}, 9 * time.Second, true},
		{"negative ms falls to seconds", http.Header{"Retry-After-Ms": {"-5"}, "Retry-After": {"1"}}, time.Second, true},
		{"seconds", http.Header{"Retry-After": {"30"}}, 30 * time.Second, true},
		{"no cap", http.Header{"Retry-After": {"86400"}}, 24 * time.Hour, true},
		{"fractional seconds round up to the ns", http.Header{"Retry-After": {"1.5"}}, 1500 * time.Millisecond, true},
		{"http date", http.Header{"Retry-After": {"Sun, 01 Mar 2026 12:01:00 GMT"}}, time.Minute, true},
		{"http date past", http.Header{"Retry-After": {"Sun, 01 Mar 2026 11:00:00 GMT"}}, 0, true},
		{"openai exhausted tokens", http.Header{
			"X-Ratelimit-Remaining-Requests": {"3"}, "X-Ratelimit-Reset-Requests": {"2s"},
			"X-Ratelimit-Remaining-Tokens": {"0"}, "X-Ratelimit-Reset-Tokens": {"1m30.5s"}}, 90500 * time.Millisecond, true},
		{"openai none exhausted: latest reset", http.Header{
			"X-Ratelimit-Remaining-Requests": {"3"}, "X-Ratelimit-Reset-Requests": {"2s"},
			"X-Ratelimit-Remaining-Tokens": {"10"}, "X-Ratelimit-Reset-Tokens": {"20ms"}}, 2 * time.Second, true},
		{"anthropic exhausted input", http.Header{
			"Anthropic-Ratelimit-Input-Tokens-Remaining": {"0"},
			"Anthropic-Ratelimit-Input-Tokens-Reset":     {"2026-03-01T12:00:42Z"},
			"Anthropic-Ratelimit-Requests-Remaining":     {"7"},
			"Anthropic-Ratelimit-Requests-Reset":         {"2026-03-01T12:05:00Z"}}, 42 * time.Second, true},
		{"garbage", http.Header{"Retry-After": {"later"}, "X-Ratelimit-Reset-Tokens": {"soon"}}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := retryHint(tc.h, now)
			if got != tc.want || ok != tc.wantOK {
				t.Errorf("retryHint = %v, %v; want %v, %v", got, ok, tc.want, tc.wantOK)
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	c := Config{
		MaxAttempts: -1, BackoffBase: time.Second, BackoffMax: time.Millisecond, SettleTimeout: -1,
		Fallback: FallbackConfig{URL: "fallback.example", CanaryShare: 2, MaxErrorRate: 1},
	}
	err := c.Validate()
	if err == nil {
		t.Fatal("Validate accepted a broken config")
	}
	for _, want := range []string{"Budget is nil", "MaxAttempts", "BackoffMax", "SettleTimeout", "Fallback.URL",
		"CanaryShare", "MaxErrorRate"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate's error does not mention %s:\n%v", want, err)
		}
	}
	d := DefaultConfig()
	d.Budget = func(Call) Budget { return nil }
	if err := d.Validate(); err != nil {
		t.Errorf("DefaultConfig with a Budget: %v", err)
	}
	if _, err := New(Config{}); err == nil {
		t.Error("New accepted a Config without Budget")
	}
}

func TestEstimateInput(t *testing.T) {
	g, err := New(Config{Budget: func(Call) Budget { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	body := `{"model":"m","max_tokens":10,"max_completion_tokens":25,"messages":[{"role":"user","content":"` +
		strings.Repeat("a", 300) + `"}]}`
	c, ok := g.parseCall(ChatCompletions, []byte(body))
	if !ok {
		t.Fatal("not parsed")
	}
	msgBytes := len(`[{"role":"user","content":"` + strings.Repeat("a", 300) + `"}]`)
	want := Cost{Requests: 1, InputTokens: int64((msgBytes+2)/3 + 3), OutputTokens: 25}
	if c.estimate != want {
		t.Errorf("estimate %+v, want %+v (the largest output cap)", c.estimate, want)
	}
	c, _ = g.parseCall(Messages, []byte(`{"model":"m","messages":[]}`))
	if c.estimate.OutputTokens != DefaultMaxOutputTokens {
		t.Errorf("no output cap: reserved %d, want DefaultMaxOutputTokens", c.estimate.OutputTokens)
	}
	g.cfg.Tokenizer = func(API, string, []byte) (int64, error) { return 7, nil }
	if c, _ = g.parseCall(Responses, []byte(body)); c.estimate.InputTokens != 7 {
		t.Errorf("Tokenizer ignored: %d", c.estimate.InputTokens)
	}
}
