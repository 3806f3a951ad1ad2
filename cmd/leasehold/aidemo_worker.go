package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"golang.org/x/time/rate"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/client/guard"
	"github.com/leasehold/leasehold/internal/fakeprovider"
)

// The limiter a demo worker calls the provider through.
const (
	demoLeasehold  = "leasehold"   // the guard over a Budget shared by every worker
	demoPerProcess = "per-process" // x/time/rate in each process at the provider's limit / workers
	demoNone       = "none"        // nothing: the provider SDK's own retries only
)

// demoPrompt is every call's prompt: short, so the reply's tokens dominate
// the cost, as in the chat traffic that runs into TPM limits.
const demoPrompt = "Say hello to the team in one sentence."

// maxLatencySamples bounds the pre-send latencies a worker reports.
const maxLatencySamples = 50_000

// workerReport is what a demo worker prints as its last stdout line (JSON).
type workerReport struct {
	Calls  int64 `json:"calls"`  // calls made
	OK     int64 `json:"ok"`     // calls answered 2xx
	Errors int64 `json:"errors"` // calls that ended in an error before the run did (a 429 the SDK gave up on)
	// Warm are the guard's pre-send times (ns) of calls whose reservation
	// was taken from leases this process held, without waiting; Waited
	// counts the others.
	Warm   []int64 `json:"warm,omitempty"`
	Waited int64   `json:"waited"`
	// End is when the last goroutine stopped calling (Unix ns).
	End int64 `json:"end"`
}

// runAIDemoWorker is one worker process of `leasehold ai-demo` (the hidden
// `ai-demo-worker` command): --goroutines goroutines call the provider's
// chat completions through openai-go until --duration ends, through the
// limiter --mode names, then it prints a workerReport.
func runAIDemoWorker(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("ai-demo-worker", flag.ContinueOnError)
	mode := fs.String("mode", demoLeasehold, "leasehold, per-process or none")
	endpoints := fs.String("endpoints", "", "cluster client addresses (leasehold)")
	ca := fs.String("ca", "", "CA file (leasehold)")
	cert := fs.String("cert", "", "client certificate file (leasehold)")
	key := fs.String("key", "", "client key file (leasehold)")
	scope := fs.String("scope", "", "the Budget's scope (leasehold)")
	baseURL := fs.String("provider", "", "the provider's base URL, …/v1/")
	model := fs.String("model", "gpt-4.1", "model to call")
	goroutines := fs.Int("goroutines", 16, "goroutines calling at once")
	duration := fs.Duration("duration", 10*time.Second, "how long to call")
	rpm := fs.Int64("rpm", 0, "the provider's requests per minute")
	tpm := fs.Int64("tpm", 0, "the provider's tokens per minute")
	share := fs.Int64("share", 1, "per-process: this process's share is the limit / share")
	maxTokens := fs.Int64("max-tokens", 256, "max_completion_tokens of every call")
	startFile := fs.String("start-file", "", "after dialing, wait until this file exists, then start calling; \"\": at once")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if *rpm <= 0 || *tpm <= 0 || *share <= 0 || *goroutines <= 0 || *baseURL == "" {
		return errors.New("ai-demo-worker: --rpm, --tpm, --share, --goroutines and --provider are required")
	}
	base := &http.Transport{MaxIdleConns: 2 * *goroutines, MaxIdleConnsPerHost: 2 * *goroutines}
	defer base.CloseIdleConnections()

	var transport http.RoundTripper
	opts := []option.RequestOption{option.WithBaseURL(*baseURL), option.WithAPIKey("sk-demo")}
	var lat latencies
	empty := func(time.Time) {} // empties this process's limiter at the start
	switch *mode {
	case demoLeasehold:
		c, err := client.Dial(ctx, splitList(*endpoints), client.WithTLS(*cert, *key, *ca),
			client.WithLogger(slog.New(slog.DiscardHandler)))
		if err != nil {
			return err
		}
		defer c.Close()
		b := c.Budget(*scope, demoRules(*rpm, *tpm)...)
		g, err := guard.New(guard.Config{
			Budget:    func(guard.Call) guard.Budget { return warmBudget{guard.ForBudget(b)} },
			Transport: sentAt{base},
			Logger:    slog.New(slog.DiscardHandler),
		})
		if err != nil {
			return err
		}
		transport = timed{g, &lat}
		// The guard retries, honouring the provider's whole wait.
		opts = append(opts, option.WithMaxRetries(0))
	case demoPerProcess:
		// Each process starts empty, like the provider (ai-demo drains
		// it before the row), and admits its share of the limit.
		per := float64(time.Minute) / float64(time.Second)
		reqs := rate.NewLimiter(rate.Limit(float64(*rpm / *share)/per), int(*rpm / *share))
		toks := rate.NewLimiter(rate.Limit(float64(*tpm / *share)/per), int(*tpm / *share))
		empty = func(now time.Time) { toks.ReserveN(now, toks.Burst()) }
		transport = &rateLimited{base: base, requests: reqs, tokens: toks}
	case demoNone:
		transport = base
	default:
		return fmt.Errorf("--mode %q: want leasehold, per-process or none", *mode)
	}
	ai := openai.NewClient(append(opts, option.WithHTTPClient(&http.Client{Transport: transport}))...)

	// Every worker starts calling when ai-demo says (it has emptied the
	// provider and the Budget), and stops duration later.
	if *startFile != "" {
		if err := awaitFile(ctx, *startFile, time.Minute); err != nil {
			return err
		}
	}
	start := time.Now()
	empty(time.Now())
	ctx, cancel := context.WithDeadline(ctx, start.Add(*duration))
	defer cancel()
	var rep workerReport
	var calls, ok, failed atomic.Int64
	var wg sync.WaitGroup
	for range *goroutines {
		wg.Go(func() {
			for ctx.Err() == nil {
				calls.Add(1)
				_, err := ai.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
					Model:               *model,
					MaxCompletionTokens: openai.Int(*maxTokens),
					Messages:            []openai.ChatCompletionMessageParamUnion{openai.UserMessage(demoPrompt)},
				})
				if errors.Is(err, client.ErrWouldExceedDeadline) {
					// The Budget cannot admit the call before the run
					// ends: this goroutine is done.
					return
				}
				if err != nil && ctx.Err() != nil {
					// The run ended under the call (in flight, or
					// waiting for tokens): neither served nor failed.
					return
				}
				if err != nil {
					if n := failed.Add(1); n <= 5 {
						fmt.Fprintf(os.Stderr, "ai-demo-worker: call failed: %v\n", err)
					}
					continue
				}
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	rep.End = time.Now().UnixNano()
	rep.Calls, rep.OK, rep.Errors = calls.Load(), ok.Load(), failed.Load()
	rep.Warm, rep.Waited = lat.result()
	line, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\n", line)
	return err
}

// demoRules are the Budget equal to the provider's own limits: its requests
// and tokens (input + output) per minute, each with a minute's burst, as the
// provider's buckets hold.
func demoRules(rpm, tpm int64) []client.Rule {
	return []client.Rule{
		{Counts: client.Requests, Limit: client.Limit{Rate: rpm, Per: time.Minute}},
		{Counts: client.Tokens, Limit: client.Limit{Rate: tpm, Per: time.Minute}},
	}
}

// A demoCall is one guarded call's timing, carried in its request's
// context from timed (the outer RoundTripper) through the guard to sentAt
// (the guard's Transport).
type demoCall struct {
	start time.Time
	warm  bool  // the first reservation was taken from leases held, without a wait
	sent  int64 // ns from start to the first attempt's send; 0: not sent
}

type demoCallKey struct{}

// timed wraps the guard: it stamps each call's start and records the time
// the guard took before sending it.
type timed struct {
	next http.RoundTripper
	lat  *latencies
}

func (t timed) RoundTrip(req *http.Request) (*http.Response, error) {
	c := new(demoCall)
	req = req.WithContext(context.WithValue(req.Context(), demoCallKey{}, c))
	c.start = time.Now()
	resp, err := t.next.RoundTrip(req)
	if c.sent > 0 {
		t.lat.add(c.warm, c.sent)
	}
	return resp, err
}

// sentAt is the guard's Transport: it notes when the first attempt of a
// call leaves the guard.
type sentAt struct{ next http.RoundTripper }

func (s sentAt) RoundTrip(req *http.Request) (*http.Response, error) {
	if c, ok := req.Context().Value(demoCallKey{}).(*demoCall); ok && c.sent == 0 {
		c.sent = max(1, int64(time.Since(c.start)))
	}
	return s.next.RoundTrip(req)
}

// warmBudget tells the guard's added latency on warm leases from the wait
// for tokens: it first reserves with a context that has ended, which
// client.Budget.Reserve answers from the leases this process holds, or
// refuses without a round trip; only then does it reserve with the call's
// context, which may wait for a refresh or for the budget to refill. The
// second call is the rate limit working, not the guard's cost.
type warmBudget struct{ guard.Budget }

var endedCtx = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

func (w warmBudget) Reserve(ctx context.Context, estimate guard.Cost) (guard.Reservation, error) {
	if r, err := w.Budget.Reserve(endedCtx, estimate); err == nil {
		if c, ok := ctx.Value(demoCallKey{}).(*demoCall); ok && c.sent == 0 {
			c.warm = true
		}
		return r, nil
	}
	return w.Budget.Reserve(ctx, estimate)
}

// latencies collects the pre-send times of warm calls, and counts the
// others.
type latencies struct {
	mu     sync.Mutex
	warm   []int64
	waited int64
}

func (l *latencies) add(warm bool, ns int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !warm {
		l.waited++
		return
	}
	if len(l.warm) < maxLatencySamples {
		l.warm = append(l.warm, ns)
	}
}

func (l *latencies) result() ([]int64, int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.warm), l.waited
}

// rateLimited is the per-process baseline: it waits on x/time/rate
// limiters for one request and the call's input tokens (counted as the
// provider counts them) plus its max output, before sending. It cannot
// give back what a reply did not use: x/time/rate has no settle.
type rateLimited struct {
	base             http.RoundTripper
	requests, tokens *rate.Limiter
}

func (r *rateLimited) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil && req.Body != http.NoBody {
		body, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		var q struct {
			MaxCompletionTokens int64 `json:"max_completion_tokens"`
		}
		_ = json.Unmarshal(body, &q)
		cost := fakeprovider.CountInputTokens(body) + q.MaxCompletionTokens
		if err := r.requests.Wait(req.Context()); err != nil {
			return nil, err
		}
		if err := r.tokens.WaitN(req.Context(), int(cost)); err != nil {
			return nil, err
		}
		req = req.Clone(req.Context())
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.ContentLength = int64(len(body))
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	}
	return r.base.RoundTrip(req)
}

// awaitFile waits until path exists, polling every millisecond, at most
// limit or until ctx ends.
func awaitFile(ctx context.Context, path string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", path, ctx.Err())
		}
	}
}
