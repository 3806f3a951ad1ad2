package guard

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// retryHint is the wait a response asks for: retry-after-ms, else
// retry-after (seconds, fractional allowed, or an HTTP date), else the reset
// headers of the exhausted limits (OpenAI's x-ratelimit-reset-* durations,
// Anthropic's anthropic-ratelimit-*-reset RFC 3339 times); false if it
// names none. A date in the past is a wait of 0. Dates are compared with
// now, the local clock: a provider's clock ahead of ours lengthens the wait,
// behind it shortens it.
func retryHint(h http.Header, now time.Time) (time.Duration, bool) {
	if v := h.Get("Retry-After-Ms"); v != "" {
		if ms, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && ms >= 0 && !math.IsInf(ms, 0) {
			return durationOf(ms, float64(time.Millisecond)), true
		}
	}
	if v := h.Get("Retry-After"); v != "" {
		v = strings.TrimSpace(v)
		if s, err := strconv.ParseFloat(v, 64); err == nil && s >= 0 && !math.IsInf(s, 0) {
			return durationOf(s, float64(time.Second)), true
		}
		if t, err := http.ParseTime(v); err == nil {
			return max(t.Sub(now), 0), true
		}
	}
	limits := rateLimits(h, now)
	var exhausted, latest time.Duration
	var sawExhausted, sawAny bool
	for _, l := range limits {
		if !l.hasReset {
			continue
		}
		sawAny, latest = true, max(latest, l.reset)
		if l.hasRemaining && l.remaining <= 0 {
			sawExhausted, exhausted = true, max(exhausted, l.reset)
		}
	}
	switch {
	case sawExhausted:
		return exhausted, true
	case sawAny:
		// No limit says it is empty (the call was larger than what
		// remains): wait for the latest reset.
		return latest, true
	}
	return 0, false
}

// durationOf converts v units to a Duration, saturating.
func durationOf(v, unit float64) time.Duration {
	ns := v * unit
	if ns >= math.MaxInt64 {
		return math.MaxInt64
	}
	return time.Duration(math.Ceil(ns))
}

// rateLimit is one dimension of a response's rate-limit headers.
type rateLimit struct {
	dim          Dimension
	remaining    int64
	hasRemaining bool
	reset        time.Duration
	hasReset     bool
}

// openAIDims and anthropicDims map header infixes to dimensions.
var (
	openAIDims = []struct {
		name string
		dim  Dimension
	}{{"requests", Requests}, {"tokens", Tokens}}
	anthropicDims = []struct {
		name string
		dim  Dimension
	}{{"requests", Requests}, {"tokens", Tokens}, {"input-tokens", InputTokens}, {"output-tokens", OutputTokens}}
)

// rateLimits reads the remaining and reset headers of either provider.
func rateLimits(h http.Header, now time.Time) []rateLimit {
	var out []rateLimit
	for _, d := range openAIDims {
		l := rateLimit{dim: d.dim}
		l.remaining, l.hasRemaining = parseCount(h.Get("X-Ratelimit-Remaining-" + d.name))
		l.reset, l.hasReset = parseOpenAIReset(h.Get("X-Ratelimit-Reset-" + d.name))
		if l.hasRemaining || l.hasReset {
			out = append(out, l)
		}
	}
	for _, d := range anthropicDims {
		pre := "Anthropic-Ratelimit-" + d.name + "-"
		l := rateLimit{dim: d.dim}
		l.remaining, l.hasRemaining = parseCount(h.Get(pre + "Remaining"))
		if v := h.Get(pre + "Reset"); v != "" {
			if t, err := time.Parse(time.RFC3339, strings.TrimSpace(v)); err == nil {
				l.reset, l.hasReset = max(t.Sub(now), 0), true
			}
		}
		if l.hasRemaining || l.hasReset {
			out = append(out, l)
		}
	}
	return out
}

func parseCount(v string) (int64, bool) {
	if v == "" {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil {
		return 0, false
	}
	return max(n, 0), true
}

// parseOpenAIReset reads "6m0s", "1s", "20ms", "1.5s" (Go's duration
// form), or a bare number of seconds.
func parseOpenAIReset(v string) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if d, err := time.ParseDuration(v); err == nil {
		return max(d, 0), true
	}
	if s, err := strconv.ParseFloat(v, 64); err == nil && s >= 0 && !math.IsInf(s, 0) {
		return durationOf(s, float64(time.Second)), true
	}
	return 0, false
}
