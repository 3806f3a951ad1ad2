package guard

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"
)

// API is which provider API a request is for. Values start at 1 and are
// never reused.
type API uint8

const (
	// ChatCompletions is OpenAI's POST …/chat/completions (and every
	// OpenAI-compatible server's).
	ChatCompletions API = iota + 1
	// Responses is OpenAI's POST …/responses.
	Responses
	// Messages is Anthropic's POST …/messages.
	Messages
)

func (a API) String() string {
	switch a {
	case ChatCompletions:
		return "chat-completions"
	case Responses:
		return "responses"
	case Messages:
		return "messages"
	}
	return "unknown"
}

// Call describes one attempt of a guarded call, for choosing its Budget.
type Call struct {
	// API is the endpoint's API.
	API API
	// Host is the host:port the attempt goes to: the request's, or the
	// fallback's when the breaker routes it there.
	Host string
	// Fallback is true when the attempt goes to the fallback.
	Fallback bool
	// Model is the request body's model.
	Model string
	// Stream is the request body's stream flag.
	Stream bool
}

// Defaults of Config.
const (
	DefaultMaxOutputTokens       = 4096
	DefaultBytesPerToken         = 3
	DefaultMaxAttempts           = 4
	DefaultBackoffBase           = 500 * time.Millisecond
	DefaultBackoffMax            = 30 * time.Second
	DefaultResponseHeaderTimeout = 10 * time.Minute
	DefaultSettleTimeout         = 10 * time.Second
	DefaultKeepAliveEvery        = 30 * time.Second
	DefaultMaxUsageBodyBytes     = 16 << 20
)

// Config configures a Guard. Start from DefaultConfig and set Budget; a zero
// duration or count means its default, so a Config built by hand works too.
// Validate reports every problem at once.
type Config struct {
	// Budget returns the budget that pays for a call, or nil to send it
	// unguarded (no reservation; breaker and retries still apply). It is
	// called before every attempt and must be safe for concurrent use; keep
	// it a map lookup. Required.
	Budget func(Call) Budget

	// Transport sends the requests. Default: http.DefaultTransport.
	Transport http.RoundTripper

	// DefaultMaxOutputTokens is the output reserved when a request sets
	// none of max_tokens, max_completion_tokens and max_output_tokens.
	// Default 4096; at least 1. Set it to the model's output limit to be
	// safe against long replies (OpenAI's default is the model's limit).
	DefaultMaxOutputTokens int64

	// BytesPerToken is the default input estimator's divisor: the prompt
	// fields' raw JSON bytes / BytesPerToken, rounded up, plus 3. Default
	// 3; at least 1. English averages about 4 bytes a token on current
	// tokenizers and the JSON punctuation counts too, so 3 overestimates;
	// 1 is an upper bound for any byte-level BPE tokenizer.
	BytesPerToken int

	// Tokenizer, if set, replaces the estimator: it returns the input
	// tokens of a request body. On an error the estimator is used.
	Tokenizer func(api API, model string, body []byte) (int64, error)

	// MaxAttempts bounds the attempts of one call, retries included, for
	// 429s, retryable statuses (408, 409, 5xx) and connection errors.
	// Default 4; at least 1. A 429's wait is honoured whole (no cap): the
	// attempts are bounded, not the wait.
	MaxAttempts int

	// BackoffBase and BackoffMax shape the backoff between retries of
	// anything but a 429 with a wait hint: attempt n waits a uniformly
	// random time in [0, min(BackoffMax, BackoffBase·2^(n−1))] (full
	// jitter), or the server's retry-after if that is longer. Defaults
	// 500ms and 30s.
	BackoffBase time.Duration
	BackoffMax  time.Duration

	// ResponseHeaderTimeout bounds one attempt's wait for response headers;
	// hitting it is a timeout, which trips the breaker and is retried.
	// Default 10m (a non-streaming call sends headers only when the whole
	// reply is ready).
	ResponseHeaderTimeout time.Duration

	// SettleTimeout bounds a Settle, run when the body ends or closes on a
	// context detached from the request's cancellation. Default 10s.
	SettleTimeout time.Duration

	// KeepAliveEvery is how often a response body being read calls the
	// reservation's KeepAlive (checked on each Read: a stream that sends
	// nothing for longer is not kept alive). Default 30s; negative
	// disables it.
	KeepAliveEvery time.Duration

	// MaxUsageBodyBytes bounds the JSON response bytes kept to read usage
	// from; a longer body settles at the reservation. Default 16 MiB.
	MaxUsageBodyBytes int

	// Breaker configures the circuit breaker per host and model.
	Breaker BreakerConfig

	// Fallback, if its URL is set, is where an open breaker routes calls.
	Fallback FallbackConfig

	// Logger receives settle, cancel and budget errors and breaker and
	// fallback transitions. Default: slog.Default().
	Logger *slog.Logger
}

// BreakerConfig configures the circuit breaker kept per host and model
// (sony/gobreaker). 5xx answers, 408 and timeouts and connection errors are
// failures; 429s, other 4xx and a cancelled context count for nothing.
type BreakerConfig struct {
	// ConsecutiveFailures opens the breaker. Default 5; at least 1.
	ConsecutiveFailures uint32
	// OpenFor is how long an open breaker refuses before it lets probes
	// through (half-open). Default 30s.
	OpenFor time.Duration
	// HalfOpenProbes is the calls let through half-open; that many
	// successes in a row close it, one failure opens it again. Default 1.
	HalfOpenProbes uint32
}

// FallbackConfig configures routing to a fallback while a breaker is open.
// The fallback starts on a canary share of the traffic the open breaker
// refuses (the rest fails fast with ErrBreakerOpen); once CanarySamples calls
// there stay within MaxErrorRate and MaxP99 it takes all of it, and whenever
// the last CanarySamples cross either threshold it is rolled back: no
// traffic for RollbackFor, then a canary again. When the primary's breaker
// closes, traffic goes back to it and the fallback's record is cleared.
type FallbackConfig struct {
	// URL is the fallback's base: its scheme and host replace the
	// request's; the path is kept, so the fallback must serve the same API.
	// Empty: no fallback.
	URL string
	// Rewrite, if set, edits each request sent to the fallback (credentials,
	// a model name) after its URL is changed.
	Rewrite func(*http.Request)
	// CanaryShare is the share of refused calls sent to the fallback during
	// the canary. Default 0.1; in (0, 1].
	CanaryShare float64
	// CanarySamples is the calls measured before promotion, and the sliding
	// window the thresholds are checked on. Default 20; at least 1.
	CanarySamples int
	// MaxErrorRate rolls the fallback back when its share of failures in
	// the window exceeds it. Default 0.2; in [0, 1).
	MaxErrorRate float64
	// MaxP99 rolls the fallback back when the 99th percentile of its time
	// to response headers in the window exceeds it. Default 30s.
	MaxP99 time.Duration
	// RollbackFor is how long a rolled-back fallback gets no traffic.
	// Default 1m.
	RollbackFor time.Duration
}

// DefaultConfig returns a Config with every default filled in; the caller
// sets Budget.
func DefaultConfig() Config {
	return Config{
		Transport:              http.DefaultTransport,
		DefaultMaxOutputTokens: DefaultMaxOutputTokens,
		BytesPerToken:          DefaultBytesPerToken,
		MaxAttempts:            DefaultMaxAttempts,
		BackoffBase:            DefaultBackoffBase,
		BackoffMax:             DefaultBackoffMax,
		ResponseHeaderTimeout:  DefaultResponseHeaderTimeout,
		SettleTimeout:          DefaultSettleTimeout,
		KeepAliveEvery:         DefaultKeepAliveEvery,
		MaxUsageBodyBytes:      DefaultMaxUsageBodyBytes,
		Breaker: BreakerConfig{
			ConsecutiveFailures: 5,
			OpenFor:             30 * time.Second,
			HalfOpenProbes:      1,
		},
		Fallback: FallbackConfig{
			CanaryShare:   0.1,
			CanarySamples: 20,
			MaxErrorRate:  0.2,
			MaxP99:        30 * time.Second,
			RollbackFor:   time.Minute,
		},
		Logger: slog.Default(),
	}
}

// withDefaults returns c with every zero field that has a default set to it.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Transport == nil {
		c.Transport = d.Transport
	}
	if c.Logger == nil {
		c.Logger = d.Logger
	}
	setDefault(&c.DefaultMaxOutputTokens, d.DefaultMaxOutputTokens)
	setDefault(&c.BytesPerToken, d.BytesPerToken)
	setDefault(&c.MaxAttempts, d.MaxAttempts)
	setDefault(&c.BackoffBase, d.BackoffBase)
	setDefault(&c.BackoffMax, d.BackoffMax)
	setDefault(&c.ResponseHeaderTimeout, d.ResponseHeaderTimeout)
	setDefault(&c.SettleTimeout, d.SettleTimeout)
	setDefault(&c.KeepAliveEvery, d.KeepAliveEvery)
	setDefault(&c.MaxUsageBodyBytes, d.MaxUsageBodyBytes)
	setDefault(&c.Breaker.ConsecutiveFailures, d.Breaker.ConsecutiveFailures)
	setDefault(&c.Breaker.OpenFor, d.Breaker.OpenFor)
	setDefault(&c.Breaker.HalfOpenProbes, d.Breaker.HalfOpenProbes)
	setDefault(&c.Fallback.CanaryShare, d.Fallback.CanaryShare)
	setDefault(&c.Fallback.CanarySamples, d.Fallback.CanarySamples)
	setDefault(&c.Fallback.MaxErrorRate, d.Fallback.MaxErrorRate)
	setDefault(&c.Fallback.MaxP99, d.Fallback.MaxP99)
	setDefault(&c.Fallback.RollbackFor, d.Fallback.RollbackFor)
	return c
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// Validate reports every problem with c at once, joined with errors.Join, or
// nil. Zero durations and counts are valid: they mean their defaults.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("guard config: "+format, args...))
	}
	if c.Budget == nil {
		bad("Budget is nil; give a func that returns the budget for a call")
	}
	if c.DefaultMaxOutputTokens < 0 {
		bad("DefaultMaxOutputTokens %d is negative", c.DefaultMaxOutputTokens)
	}
	if c.BytesPerToken < 0 {
		bad("BytesPerToken %d is negative", c.BytesPerToken)
	}
	if c.MaxAttempts < 0 {
		bad("MaxAttempts %d is negative", c.MaxAttempts)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"BackoffBase", c.BackoffBase}, {"BackoffMax", c.BackoffMax},
		{"ResponseHeaderTimeout", c.ResponseHeaderTimeout}, {"SettleTimeout", c.SettleTimeout},
		{"Breaker.OpenFor", c.Breaker.OpenFor}, {"Fallback.MaxP99", c.Fallback.MaxP99},
		{"Fallback.RollbackFor", c.Fallback.RollbackFor},
	} {
		if d.v < 0 {
			bad("%s %v is negative", d.name, d.v)
		}
	}
	if c.BackoffBase > 0 && c.BackoffMax > 0 && c.BackoffMax < c.BackoffBase {
		bad("BackoffMax %v is below BackoffBase %v", c.BackoffMax, c.BackoffBase)
	}
	if c.MaxUsageBodyBytes < 0 {
		bad("MaxUsageBodyBytes %d is negative", c.MaxUsageBodyBytes)
	}
	if c.Fallback.URL != "" {
		u, err := url.Parse(c.Fallback.URL)
		switch {
		case err != nil:
			bad("Fallback.URL %q: %v", c.Fallback.URL, err)
		case u.Scheme != "http" && u.Scheme != "https", u.Host == "":
			bad("Fallback.URL %q is not an absolute http(s) URL", c.Fallback.URL)
		}
	}
	if s := c.Fallback.CanaryShare; s < 0 || s > 1 {
		bad("Fallback.CanaryShare %v is outside (0, 1]", s)
	}
	if c.Fallback.CanarySamples < 0 {
		bad("Fallback.CanarySamples %d is negative", c.Fallback.CanarySamples)
	}
	if r := c.Fallback.MaxErrorRate; r < 0 || r >= 1 {
		bad("Fallback.MaxErrorRate %v is outside [0, 1)", r)
	}
	return errors.Join(errs...)
}
