package guard

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// settleBody is a guarded call's response body. It reads usage from the
// JSON body or the SSE stream as the caller reads it, and settles the
// reservation once: at EOF, at Close, or when the request's context ends,
// whichever comes first. A response that ended complete with usage settles
// at the usage; anything else (cut short, closed early, cancelled, no usage)
// at the reservation.
type settleBody struct {
	rc            io.ReadCloser
	g             *Guard
	res           Reservation // nil: unguarded, nothing to settle
	reserved      Cost
	api           API
	sse           bool
	strip         bool
	ctx           context.Context // the request's, without its cancellation
	cancelAttempt func()
	stopAfter     func() bool

	settled       atomic.Bool
	once          sync.Once
	lastKeepAlive time.Time // Read only

	// SSE framing, touched by Read only.
	in      []byte // bytes not yet split into lines
	event   []byte // the current event's raw lines
	data    []byte // the current event's data, lines joined with \n
	name    string // the current event's name
	out     []byte // bytes ready for the caller
	scratch []byte
	upErr   error // upstream's error (io.EOF included), returned once out is drained

	mu struct {
		sync.Mutex
		json     []byte // JSON body kept for its usage
		over     bool   // the JSON body outgrew MaxUsageBodyBytes
		usage    Cost
		hasUsage bool
		complete bool
	}
}

func (g *Guard) newBody(ctx context.Context, resp *http.Response, c *call, res Reservation, cancelAttempt func()) io.ReadCloser {
	b := &settleBody{
		rc: resp.Body, g: g, res: res, reserved: c.estimate, api: c.api, strip: c.stripUsage,
		ctx: context.WithoutCancel(ctx), cancelAttempt: cancelAttempt, lastKeepAlive: g.clock.now(),
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err == nil && mt == "text/event-stream" {
		b.sse = true
	}
	// A caller that cancels and never closes still gives the slot back.
	b.stopAfter = context.AfterFunc(ctx, b.finish)
	return b
}

func (b *settleBody) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	b.keepAlive()
	if !b.sse {
		n, err := b.rc.Read(p)
		b.mu.Lock()
		if !b.mu.over {
			if len(b.mu.json)+n > b.g.cfg.MaxUsageBodyBytes {
				b.mu.over, b.mu.json = true, nil
			} else {
				b.mu.json = append(b.mu.json, p[:n]...)
			}
		}
		b.mu.Unlock()
		if err != nil {
			b.finish()
		}
		return n, err
	}
	for len(b.out) == 0 {
		if b.upErr != nil {
			b.finish()
			return 0, b.upErr
		}
		if b.scratch == nil {
			b.scratch = make([]byte, 8<<10)
		}
		n, err := b.rc.Read(b.scratch)
		b.frame(b.scratch[:n])
		if err != nil {
			// A partial event at the end is passed on as it is.
			b.out = append(b.out, b.event...)
			b.out = append(b.out, b.in...)
			b.event, b.in = b.event[:0], b.in[:0]
			b.upErr = err
		}
	}
	n := copy(p, b.out)
	b.out = b.out[:copy(b.out, b.out[n:])]
	return n, nil
}

// keepAlive calls the reservation's KeepAlive when KeepAliveEvery has
// passed since the last call.
func (b *settleBody) keepAlive() {
	every := b.g.cfg.KeepAliveEvery
	if b.res == nil || every <= 0 || b.settled.Load() {
		return
	}
	now := b.g.clock.now()
	if now.Sub(b.lastKeepAlive) < every {
		return
	}
	b.lastKeepAlive = now
	if err := b.res.KeepAlive(b.ctx); err != nil {
		b.g.log.Warn("guard: keep reservation alive", "err", err)
	}
}

// frame splits bytes into SSE lines and events, handing each whole event to
// onEvent and its raw bytes, unless dropped, to out.
func (b *settleBody) frame(p []byte) {
	b.in = append(b.in, p...)
	for {
		i := bytes.IndexByte(b.in, '\n')
		if i < 0 {
			return
		}
		line := b.in[:i+1]
		b.event = append(b.event, line...)
		content := bytes.TrimRight(line, "\r\n")
		switch {
		case len(content) == 0:
			if b.onEvent() {
				b.out = append(b.out, b.event...)
			}
			b.event, b.data, b.name = b.event[:0], b.data[:0], ""
		case bytes.HasPrefix(content, []byte("data:")):
			v := bytes.TrimPrefix(content[len("data:"):], []byte(" "))
			if len(b.data) > 0 {
				b.data = append(b.data, '\n')
			}
			b.data = append(b.data, v...)
		case bytes.HasPrefix(content, []byte("event:")):
			b.name = string(bytes.TrimSpace(content[len("event:"):]))
		}
		b.in = b.in[:copy(b.in, b.in[i+1:])]
	}
}

// usageJSON covers the usage objects of all three APIs.
type usageJSON struct {
	PromptTokens             *int64 `json:"prompt_tokens"`
	CompletionTokens         *int64 `json:"completion_tokens"`
	InputTokens              *int64 `json:"input_tokens"`
	OutputTokens             *int64 `json:"output_tokens"`
	CacheCreationInputTokens int64  `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int64  `json:"cache_read_input_tokens"`
}

// input and output are the usage's tokens, whichever API's names it uses;
// Anthropic's input_tokens excludes its cache tokens, so they are added.
func (u *usageJSON) input() (int64, bool) {
	switch {
	case u.PromptTokens != nil:
		return *u.PromptTokens, true
	case u.InputTokens != nil:
		return *u.InputTokens + u.CacheCreationInputTokens + u.CacheReadInputTokens, true
	}
	return 0, false
}

func (u *usageJSON) output() (int64, bool) {
	switch {
	case u.CompletionTokens != nil:
		return *u.CompletionTokens, true
	case u.OutputTokens != nil:
		return *u.OutputTokens, true
	}
	return 0, false
}

var (
	doneData     = []byte("[DONE]")
	usageKey     = []byte(`"usage"`)
	responseEnds = [][]byte{[]byte(`"response.completed"`), []byte(`"response.incomplete"`), []byte(`"response.failed"`)}
)

// onEvent reads usage and completion from the current event; false drops
// the event from the stream (the usage chunk the guard asked for).
func (b *settleBody) onEvent() bool {
	data := b.data
	switch b.api {
	case ChatCompletions:
		if bytes.Equal(data, doneData) {
			b.mu.Lock()
			b.mu.complete = true
			b.mu.Unlock()
			return true
		}
		if !hasObject(data, usageKey) {
			return true
		}
		var chunk struct {
			Choices []json.RawMessage `json:"choices"`
			Usage   *usageJSON        `json:"usage"`
		}
		if json.Unmarshal(data, &chunk) != nil || chunk.Usage == nil {
			return true
		}
		b.setUsage(chunk.Usage, false)
		return !(b.strip && len(chunk.Choices) == 0)

	case Responses:
		end := false
		for _, e := range responseEnds {
			if b.name == string(e[1:len(e)-1]) || bytes.Contains(data, e) {
				end = true
			}
		}
		if !end {
			return true
		}
		var ev struct {
			Type     string `json:"type"`
			Response struct {
				Usage *usageJSON `json:"usage"`
			} `json:"response"`
		}
		if json.Unmarshal(data, &ev) != nil {
			return true
		}
		switch ev.Type {
		case "response.completed", "response.incomplete", "response.failed":
		default:
			return true
		}
		if ev.Response.Usage != nil {
			b.setUsage(ev.Response.Usage, false)
		}
		b.mu.Lock()
		b.mu.complete = true
		b.mu.Unlock()
		return true

	case Messages:
		name := b.name
		if name == "" {
			var ev struct {
				Type string `json:"type"`
			}
			_ = json.Unmarshal(data, &ev)
			name = ev.Type
		}
		switch name {
		case "message_start":
			var ev struct {
				Message struct {
					Usage *usageJSON `json:"usage"`
				} `json:"message"`
			}
			if json.Unmarshal(data, &ev) == nil && ev.Message.Usage != nil {
				b.setUsage(ev.Message.Usage, true)
			}
		case "message_delta":
			var ev struct {
				Usage *usageJSON `json:"usage"`
			}
			if json.Unmarshal(data, &ev) == nil && ev.Usage != nil {
				b.setUsage(ev.Usage, true)
			}
		case "message_stop":
			b.mu.Lock()
			b.mu.complete = true
			b.mu.Unlock()
		}
	}
	return true
}

// setUsage records usage; cumulative takes the largest of each count seen
// (Anthropic's message_start and message_delta each carry part).
func (b *settleBody) setUsage(u *usageJSON, cumulative bool) {
	in, okIn := u.input()
	out, okOut := u.output()
	b.mu.Lock()
	defer b.mu.Unlock()
	if !cumulative {
		b.mu.usage = Cost{Requests: 1}
	}
	b.mu.usage.Requests = 1
	if okIn {
		b.mu.usage.InputTokens = max(b.mu.usage.InputTokens, in)
	}
	if okOut {
		b.mu.usage.OutputTokens = max(b.mu.usage.OutputTokens, out)
	}
	b.mu.hasUsage = b.mu.hasUsage || okIn || okOut
}

// hasObject reports whether data has key followed by an object (not null).
func hasObject(data, key []byte) bool {
	for {
		i := bytes.Index(data, key)
		if i < 0 {
			return false
		}
		rest := bytes.TrimLeft(data[i+len(key):], " \t\r\n")
		if len(rest) > 0 && rest[0] == ':' {
			rest = bytes.TrimLeft(rest[1:], " \t\r\n")
			if len(rest) > 0 && rest[0] == '{' {
				return true
			}
		}
		data = data[i+len(key):]
	}
}

// finish settles once: at the usage if the response is complete with usage,
// otherwise at the reservation.
func (b *settleBody) finish() {
	b.once.Do(func() {
		b.settled.Store(true)
		if b.stopAfter != nil {
			b.stopAfter()
		}
		cost := b.final()
		if b.res == nil {
			return
		}
		ctx, cancel := context.WithTimeout(b.ctx, b.g.cfg.SettleTimeout)
		defer cancel()
		if err := b.res.Settle(ctx, cost); err != nil {
			b.g.log.Warn("guard: settle", "err", err)
		}
	})
}

// final is the cost to settle at.
func (b *settleBody) final() Cost {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.sse && !b.mu.complete && !b.mu.over {
		var body struct {
			Usage *usageJSON `json:"usage"`
		}
		if json.Unmarshal(b.mu.json, &body) == nil && body.Usage != nil {
			in, okIn := body.Usage.input()
			out, okOut := body.Usage.output()
			if okIn && okOut {
				b.mu.usage = Cost{Requests: 1, InputTokens: in, OutputTokens: out}
				b.mu.hasUsage, b.mu.complete = true, true
			}
		}
		b.mu.json = nil
	}
	if b.mu.complete && b.mu.hasUsage {
		return b.mu.usage
	}
	return b.reserved
}

func (b *settleBody) Close() error {
	err := b.rc.Close()
	b.finish()
	b.cancelAttempt()
	return err
}
