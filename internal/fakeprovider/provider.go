package fakeprovider

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Limits are one model's rate limits. A zero field means no limit on that
// dimension.
type Limits struct {
	// RequestsPerMinute is the request bucket's rate and capacity (RPM).
	RequestsPerMinute int64
	// TokensPerMinute is the token bucket's rate and capacity (TPM): input
	// plus output tokens, as OpenAI counts them.
	TokensPerMinute int64
	// InputTokensPerMinute and OutputTokensPerMinute are separate input and
	// output buckets, as Anthropic counts them (ITPM, OTPM).
	InputTokensPerMinute  int64
	OutputTokensPerMinute int64
}

// Config configures a Provider. Start from DefaultConfig.
type Config struct {
	// Limits holds per-model limits; a model not listed gets Default.
	Limits map[string]Limits
	// Default is the limits of a model not in Limits. Default: 500 RPM,
	// 200,000 TPM.
	Default Limits
	// DefaultMaxTokens is the max output charged at admission, and the
	// output length's upper bound, when a request sets none of max_tokens,
	// max_completion_tokens and max_output_tokens. Default 4096.
	DefaultMaxTokens int64
	// RefundUnusedOutput gives back max − actual output tokens when a
	// response ends. Default true.
	RefundUnusedOutput bool
	// Latency is the time before the response headers. Default 0.
	Latency time.Duration
	// ChunkTokens is the output tokens per streamed chunk. Default 8.
	ChunkTokens int
	// ChunkDelay is the time between streamed chunks. Default 0.
	ChunkDelay time.Duration
	// OutputTokens, if set, fixes the output length of a request given its
	// max output; nil draws it uniformly from [1, max].
	OutputTokens func(maxTokens int64) int64
	// Seed seeds the output-length generator. Default 1.
	Seed uint64
}

// DefaultConfig returns a Config with every default filled in.
func DefaultConfig() Config {
	return Config{
		Default:            Limits{RequestsPerMinute: 500, TokensPerMinute: 200_000},
		DefaultMaxTokens:   4096,
		RefundUnusedOutput: true,
		ChunkTokens:        8,
		Seed:               1,
	}
}

// Validate reports every problem with c at once, or nil.
func (c Config) Validate() error {
	var errs []error
	check := func(name string, l Limits) {
		if l.RequestsPerMinute < 0 || l.TokensPerMinute < 0 || l.InputTokensPerMinute < 0 || l.OutputTokensPerMinute < 0 {
			errs = append(errs, fmt.Errorf("fakeprovider config: %s has a negative limit", name))
		}
	}
	check("Default", c.Default)
	for m, l := range c.Limits {
		check(fmt.Sprintf("Limits[%q]", m), l)
	}
	if c.DefaultMaxTokens <= 0 {
		errs = append(errs, errors.New("fakeprovider config: DefaultMaxTokens must be positive"))
	}
	if c.ChunkTokens <= 0 {
		errs = append(errs, errors.New("fakeprovider config: ChunkTokens must be positive"))
	}
	if c.Latency < 0 || c.ChunkDelay < 0 {
		errs = append(errs, errors.New("fakeprovider config: Latency and ChunkDelay must not be negative"))
	}
	return errors.Join(errs...)
}

// Stats are a Provider's counters since New. Tokens are counted per request
// as the provider reports them in usage.
type Stats struct {
	// Requests is every request to a known endpoint, refused or not.
	Requests int64
	// RateLimited is the requests answered 429.
	RateLimited int64
	// Faults is the requests that got an injected fault.
	Faults int64
	// Served is the requests whose response completed.
	Served int64
	// InputTokens and OutputTokens are the usage of served requests.
	InputTokens, OutputTokens int64
	// ChargedTokens is what the token buckets were charged net of refunds,
	// outside spending included.
	ChargedTokens int64
}

// Provider is a fake provider. It is safe for concurrent use.
type Provider struct {
	cfg Config

	mu struct {
		sync.Mutex
		models   map[string]*modelState
		rng      *rand.Rand
		faults   []Fault
		stats    Stats
		perModel map[string]*Stats
	}
}

// New returns a Provider for cfg.
func New(cfg Config) (*Provider, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := &Provider{cfg: cfg}
	p.mu.models = make(map[string]*modelState)
	p.mu.perModel = make(map[string]*Stats)
	p.mu.rng = rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))
	return p, nil
}

// Stats returns the counters over all models.
func (p *Provider) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.stats
}

// ModelStats returns the counters of one model.
func (p *Provider) ModelStats(model string) Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.mu.perModel[model]; s != nil {
		return *s
	}
	return Stats{}
}

// count applies f to the global and the model's counters. Called with p.mu held.
func (p *Provider) countLocked(model string, f func(*Stats)) {
	f(&p.mu.stats)
	s := p.mu.perModel[model]
	if s == nil {
		s = new(Stats)
		p.mu.perModel[model] = s
	}
	f(s)
}

// Spend is an outside spender: it takes requests and tokens from model's
// buckets directly, as another team sharing the key would, down to empty at
// most. Input and output tokens each come from the token bucket and from
// their own bucket when the model has one.
func (p *Provider) Spend(model string, requests, inputTokens, outputTokens int64) {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.modelLocked(model, now)
	m.requests.drain(float64(requests))
	m.tokens.drain(float64(inputTokens + outputTokens))
	m.input.drain(float64(inputTokens))
	m.output.drain(float64(outputTokens))
	p.countLocked(model, func(s *Stats) { s.ChargedTokens += inputTokens + outputTokens })
}

// Exhaust is an outside spender whose calls were charged after they ran
// (usage billed at completion, beyond what admission took): it empties
// model's buckets and takes owe's worth of their refill more, so that
// nothing is admitted for owe and every refused request is told to wait at
// least that long (retry-after). Remaining headers say 0 meanwhile.
func (p *Provider) Exhaust(model string, owe time.Duration) {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.modelLocked(model, now)
	for _, b := range []*bucket{&m.requests, &m.tokens, &m.input, &m.output} {
		if b.limited() {
			b.level = -b.perMinute * owe.Minutes()
		}
	}
}

// api is which provider API a request is for.
type api uint8

const (
	apiChat api = iota + 1
	apiResponses
	apiMessages
)

func apiFor(r *http.Request) (api, bool) {
	if r.Method != http.MethodPost {
		return 0, false
	}
	path := strings.TrimSuffix(r.URL.Path, "/")
	switch {
	case strings.HasSuffix(path, "/chat/completions"):
		return apiChat, true
	case strings.HasSuffix(path, "/responses"):
		return apiResponses, true
	case strings.HasSuffix(path, "/messages"):
		return apiMessages, true
	}
	return 0, false
}

// request is the part of a request body the fake reads.
type request struct {
	Model               string `json:"model"`
	MaxTokens           *int64 `json:"max_tokens"`
	MaxCompletionTokens *int64 `json:"max_completion_tokens"`
	MaxOutputTokens     *int64 `json:"max_output_tokens"`
	Stream              bool   `json:"stream"`
	StreamOptions       *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

// maxOutput is the largest of the request's output caps, or def.
func (q *request) maxOutput(def int64) (int64, bool) {
	best, set := int64(0), false
	for _, v := range []*int64{q.MaxTokens, q.MaxCompletionTokens, q.MaxOutputTokens} {
		if v != nil {
			set = true
			best = max(best, *v)
		}
	}
	if !set {
		return def, false
	}
	return best, true
}

// ServeHTTP serves the three endpoints; anything else is 404.
func (p *Provider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a, ok := apiFor(r)
	if !ok {
		http.NotFound(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	var q request
	if err := json.Unmarshal(body, &q); err != nil || q.Model == "" {
		writeError(w, a, http.StatusBadRequest, "invalid_request_error", "body must be JSON with a model")
		return
	}
	maxOut, set := q.maxOutput(p.cfg.DefaultMaxTokens)
	if a == apiMessages && !set {
		writeError(w, a, http.StatusBadRequest, "invalid_request_error", "max_tokens: Field required")
		return
	}
	if maxOut <= 0 {
		writeError(w, a, http.StatusBadRequest, "invalid_request_error", "max tokens must be positive")
		return
	}
	input := CountInputTokens(body)

	now := time.Now()
	p.mu.Lock()
	p.countLocked(q.Model, func(s *Stats) { s.Requests++ })
	var fault Fault
	if len(p.mu.faults) > 0 {
		fault = p.mu.faults[0]
		p.mu.faults = p.mu.faults[1:]
		p.countLocked(q.Model, func(s *Stats) { s.Faults++ })
	}
	m := p.modelLocked(q.Model, now)
	var adm admission
	if fault.Kind == 0 || fault.Kind == FaultCut {
		adm = m.admitLocked(now, input, maxOut)
		if adm.ok {
			p.countLocked(q.Model, func(s *Stats) { s.ChargedTokens += input + maxOut })
		} else {
			p.countLocked(q.Model, func(s *Stats) { s.RateLimited++ })
		}
	}
	hdr := m.headersLocked(now, a)
	out := int64(0)
	if adm.ok {
		out = p.outputLocked(maxOut)
	}
	p.mu.Unlock()

	if p.cfg.Latency > 0 && !sleepCtx(r, p.cfg.Latency) {
		return
	}
	switch fault.Kind {
	case FaultStatus:
		writeError(w, a, fault.Status, "api_error", "injected fault")
		return
	case FaultHang:
		<-r.Context().Done()
		return
	}
	for k, v := range hdr {
		w.Header()[k] = v
	}
	if !adm.ok {
		p.write429(w, a, adm, now)
		return
	}

	resp := response{api: a, model: q.Model, input: input, output: out, maxOut: maxOut,
		includeUsage: q.StreamOptions != nil && q.StreamOptions.IncludeUsage, cutAfter: -1}
	if fault.Kind == FaultCut {
		resp.cutAfter = fault.After
	}
	// The response counts as served, and refunds its unused output, when
	// its generation ends: just before its last event (or its JSON body)
	// is written, so a caller that has read the whole response sees the
	// counters that include it.
	resp.done = func() { p.finish(q.Model, input, out, maxOut) }
	if q.Stream {
		p.stream(w, r, &resp)
	} else {
		p.writeJSON(w, &resp)
	}
}

// outputLocked draws the output length for maxOut.
func (p *Provider) outputLocked(maxOut int64) int64 {
	if p.cfg.OutputTokens != nil {
		return min(max(p.cfg.OutputTokens(maxOut), 0), maxOut)
	}
	return 1 + p.mu.rng.Int64N(maxOut)
}

// finish counts a served response and refunds its unused output. A response
// that did not complete is not counted as served and refunds nothing: a
// provider keeps what it charged for a generation it started.
func (p *Provider) finish(model string, input, out, maxOut int64) {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.countLocked(model, func(s *Stats) {
		s.Served++
		s.InputTokens += input
		s.OutputTokens += out
	})
	if p.cfg.RefundUnusedOutput && maxOut > out {
		m := p.modelLocked(model, now)
		m.tokens.refund(float64(maxOut - out))
		m.output.refund(float64(maxOut - out))
		p.countLocked(model, func(s *Stats) { s.ChargedTokens -= maxOut - out })
	}
}

func sleepCtx(r *http.Request, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

// write429 answers a refused request in the provider's shape.
func (p *Provider) write429(w http.ResponseWriter, a api, adm admission, now time.Time) {
	h := w.Header()
	secs := int64((adm.wait + time.Second - 1) / time.Second)
	h.Set("Retry-After", fmt.Sprint(secs))
	if a != apiMessages {
		h.Set("Retry-After-Ms", fmt.Sprint(adm.wait.Milliseconds()))
	}
	if adm.never {
		h.Set("X-Should-Retry", "false")
	} else if a != apiMessages {
		h.Set("X-Should-Retry", "true")
	}
	msg := fmt.Sprintf("Rate limit reached for %s: %s", adm.dim, adm.reason)
	if a == apiMessages {
		writeError(w, a, http.StatusTooManyRequests, "rate_limit_error", msg)
		return
	}
	writeErrorCode(w, a, http.StatusTooManyRequests, adm.dim, "rate_limit_exceeded", msg)
}

func writeError(w http.ResponseWriter, a api, status int, typ, msg string) {
	writeErrorCode(w, a, status, typ, "", msg)
}

func writeErrorCode(w http.ResponseWriter, a api, status int, typ, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if a == apiMessages {
		_ = json.NewEncoder(w).Encode(map[string]any{
			"type": "error", "error": map[string]any{"type": typ, "message": msg}})
		return
	}
	var c any
	if code != "" {
		c = code
	}
	_ = json.NewEncoder(w).Encode(map[string]any{
		"error": map[string]any{"message": msg, "type": typ, "param": nil, "code": c}})
}
