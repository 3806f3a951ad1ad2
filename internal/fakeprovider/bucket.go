package fakeprovider

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"
)

// bucket is a token bucket of capacity perMinute refilled at perMinute a
// minute. A zero perMinute is no limit.
type bucket struct {
	perMinute float64
	level     float64
	at        time.Time
}

func newBucket(perMinute int64, now time.Time) bucket {
	return bucket{perMinute: float64(perMinute), level: float64(perMinute), at: now}
}

func (b *bucket) limited() bool { return b.perMinute > 0 }

func (b *bucket) advance(now time.Time) {
	if !b.limited() {
		return
	}
	if dt := now.Sub(b.at); dt > 0 {
		b.level = math.Min(b.perMinute, b.level+b.perMinute*dt.Minutes())
		b.at = now
	}
}

// waitFor is how long until n fits, or false if it never can.
func (b *bucket) waitFor(n float64) (time.Duration, bool) {
	if !b.limited() || n <= b.level {
		return 0, true
	}
	if n > b.perMinute {
		return 0, false
	}
	return time.Duration(math.Ceil((n - b.level) / b.perMinute * float64(time.Minute))), true
}

// untilFull is the provider's "reset": the time until the bucket is full.
func (b *bucket) untilFull() time.Duration {
	if !b.limited() || b.level >= b.perMinute {
		return 0
	}
	return time.Duration(math.Ceil((b.perMinute - b.level) / b.perMinute * float64(time.Minute)))
}

func (b *bucket) take(n float64) { b.level -= n }

func (b *bucket) drain(n float64) {
	if b.limited() {
		b.level = math.Max(0, b.level-n)
	}
}

func (b *bucket) refund(n float64) {
	if b.limited() {
		b.level = math.Min(b.perMinute, b.level+n)
	}
}

func (b *bucket) remaining() int64 { return int64(math.Max(0, math.Floor(b.level))) }

// modelState is one model's buckets.
type modelState struct {
	requests, tokens, input, output bucket
}

func (p *Provider) modelLocked(model string, now time.Time) *modelState {
	m := p.mu.models[model]
	if m == nil {
		l, ok := p.cfg.Limits[model]
		if !ok {
			l = p.cfg.Default
		}
		m = &modelState{
			requests: newBucket(l.RequestsPerMinute, now),
			tokens:   newBucket(l.TokensPerMinute, now),
			input:    newBucket(l.InputTokensPerMinute, now),
			output:   newBucket(l.OutputTokensPerMinute, now),
		}
		p.mu.models[model] = m
	}
	m.requests.advance(now)
	m.tokens.advance(now)
	m.input.advance(now)
	m.output.advance(now)
	return m
}

// admission is the outcome of admitting one request.
type admission struct {
	ok bool
	// never is a request larger than a bucket's capacity.
	never bool
	// wait is how long until the request would fit.
	wait time.Duration
	// dim names the refusing bucket: "requests", "tokens", "input_tokens"
	// or "output_tokens".
	dim, reason string
}

// admitLocked takes 1 request and input + maxOut tokens, all or nothing.
func (m *modelState) admitLocked(now time.Time, input, maxOut int64) admission {
	checks := []struct {
		b    *bucket
		n    float64
		name string
	}{
		{&m.requests, 1, "requests"},
		{&m.tokens, float64(input + maxOut), "tokens"},
		{&m.input, float64(input), "input_tokens"},
		{&m.output, float64(maxOut), "output_tokens"},
	}
	var worst admission
	for _, c := range checks {
		wait, ok := c.b.waitFor(c.n)
		if !ok {
			return admission{never: true, dim: c.name,
				reason: fmt.Sprintf("request needs %.0f, limit %.0f per minute", c.n, c.b.perMinute)}
		}
		if wait > worst.wait {
			worst = admission{wait: wait, dim: c.name,
				reason: fmt.Sprintf("limit %.0f, used %.0f, requested %.0f", c.b.perMinute, c.b.perMinute-c.b.level, c.n)}
		}
	}
	if worst.wait > 0 {
		return worst
	}
	for _, c := range checks {
		if c.b.limited() {
			c.b.take(c.n)
		}
	}
	return admission{ok: true}
}

// headersLocked returns the limit/remaining/reset headers of the provider
// that serves a.
func (m *modelState) headersLocked(now time.Time, a api) http.Header {
	h := make(http.Header)
	if a == apiMessages {
		for _, d := range []struct {
			name string
			b    *bucket
		}{{"requests", &m.requests}, {"tokens", &m.tokens}, {"input-tokens", &m.input}, {"output-tokens", &m.output}} {
			if !d.b.limited() {
				continue
			}
			pre := "Anthropic-Ratelimit-" + canonical(d.name) + "-"
			h.Set(pre+"Limit", strconv.FormatInt(int64(d.b.perMinute), 10))
			h.Set(pre+"Remaining", strconv.FormatInt(d.b.remaining(), 10))
			h.Set(pre+"Reset", ceilSecond(now.Add(d.b.untilFull())).UTC().Format(time.RFC3339))
		}
		return h
	}
	for _, d := range []struct {
		name string
		b    *bucket
	}{{"Requests", &m.requests}, {"Tokens", &m.tokens}} {
		if !d.b.limited() {
			continue
		}
		h.Set("X-Ratelimit-Limit-"+d.name, strconv.FormatInt(int64(d.b.perMinute), 10))
		h.Set("X-Ratelimit-Remaining-"+d.name, strconv.FormatInt(d.b.remaining(), 10))
		h.Set("X-Ratelimit-Reset-"+d.name, openAIDuration(d.b.untilFull()))
	}
	return h
}

// openAIDuration renders d the way OpenAI's reset headers do: Go's duration
// form at millisecond resolution ("6m0s", "1s", "20ms"), rounded up.
func openAIDuration(d time.Duration) string {
	if r := d % time.Millisecond; r != 0 {
		d += time.Millisecond - r
	}
	return d.String()
}

// ceilSecond rounds t up to a whole second: RFC 3339 resets have second
// resolution, and a reset rounded down would invite a retry that fails.
func ceilSecond(t time.Time) time.Time {
	if u := t.Truncate(time.Second); !u.Equal(t) {
		return u.Add(time.Second)
	}
	return t
}

func canonical(s string) string {
	return http.CanonicalHeaderKey(s)
}
