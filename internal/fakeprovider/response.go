package fakeprovider

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

var ids atomic.Int64

// response is one admitted request's answer.
type response struct {
	api           api
	model         string
	input, output int64
	maxOut        int64
	includeUsage  bool
	// done counts the response served; called once, before the last write.
	done func()
	// cutAfter is the chunks written before the stream (or the JSON body,
	// halfway) is cut; -1 never.
	cutAfter int
}

var words = []string{"lorem ", "ipsum ", "dolor ", "sit ", "amet "}

// text is n tokens of filler, one word a token.
func text(from, n int64) string {
	var b strings.Builder
	for i := from; i < from+n; i++ {
		b.WriteString(words[i%int64(len(words))])
	}
	return b.String()
}

func (r *response) truncated() bool { return r.output >= r.maxOut }

// writeJSON writes the whole response; false if it was cut or the write failed.
func (p *Provider) writeJSON(w http.ResponseWriter, r *response) bool {
	id := ids.Add(1)
	now := time.Now().Unix()
	var v any
	switch r.api {
	case apiChat:
		finish := "stop"
		if r.truncated() {
			finish = "length"
		}
		v = map[string]any{
			"id": fmt.Sprintf("chatcmpl-fake%d", id), "object": "chat.completion", "created": now, "model": r.model,
			"choices": []any{map[string]any{"index": 0, "finish_reason": finish, "logprobs": nil,
				"message": map[string]any{"role": "assistant", "content": text(0, r.output), "refusal": nil}}},
			"usage": chatUsage(r),
		}
	case apiResponses:
		v = responsesBody(id, now, r, "completed")
	case apiMessages:
		stop := "end_turn"
		if r.truncated() {
			stop = "max_tokens"
		}
		v = map[string]any{
			"id": fmt.Sprintf("msg_fake%d", id), "type": "message", "role": "assistant", "model": r.model,
			"content":     []any{map[string]any{"type": "text", "text": text(0, r.output)}},
			"stop_reason": stop, "stop_sequence": nil,
			"usage": map[string]any{"input_tokens": r.input, "output_tokens": r.output},
		}
	}
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	if r.cutAfter >= 0 {
		_, _ = w.Write(b[:len(b)/2])
		flush(w)
		panic(http.ErrAbortHandler)
	}
	r.done()
	_, err := w.Write(b)
	return err == nil
}

func chatUsage(r *response) map[string]any {
	return map[string]any{"prompt_tokens": r.input, "completion_tokens": r.output, "total_tokens": r.input + r.output,
		"prompt_tokens_details":     map[string]any{"cached_tokens": 0},
		"completion_tokens_details": map[string]any{"reasoning_tokens": 0}}
}

func responsesBody(id, created int64, r *response, status string) map[string]any {
	body := map[string]any{
		"id": fmt.Sprintf("resp_fake%d", id), "object": "response", "created_at": created, "status": status,
		"model": r.model, "output": []any{}, "usage": nil, "parallel_tool_calls": true, "tool_choice": "auto", "tools": []any{},
	}
	if status == "completed" {
		body["output"] = []any{map[string]any{
			"type": "message", "id": fmt.Sprintf("msg_fake%d", id), "status": "completed", "role": "assistant",
			"content": []any{map[string]any{"type": "output_text", "text": text(0, r.output), "annotations": []any{}}},
		}}
		body["usage"] = map[string]any{
			"input_tokens": r.input, "input_tokens_details": map[string]any{"cached_tokens": 0},
			"output_tokens": r.output, "output_tokens_details": map[string]any{"reasoning_tokens": 0},
			"total_tokens": r.input + r.output,
		}
	}
	return body
}

func flush(w http.ResponseWriter) {
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
}

// sse writes Server-Sent Events, flushing each.
type sse struct {
	w   http.ResponseWriter
	r   *http.Request
	p   *Provider
	n   int // events written
	cut int
	err error
}

// event writes one event (name may be empty); false once the stream is dead.
func (s *sse) event(name string, data any) bool {
	if s.err != nil {
		return false
	}
	if s.cut >= 0 && s.n >= s.cut {
		panic(http.ErrAbortHandler)
	}
	var b []byte
	if str, ok := data.(string); ok {
		b = []byte(str)
	} else {
		b, _ = json.Marshal(data)
	}
	var out strings.Builder
	if name != "" {
		out.WriteString("event: " + name + "\n")
	}
	out.WriteString("data: ")
	out.Write(b)
	out.WriteString("\n\n")
	if _, s.err = s.w.Write([]byte(out.String())); s.err != nil {
		return false
	}
	flush(s.w)
	s.n++
	return true
}

// pause waits ChunkDelay between chunks; false if the caller went away.
func (s *sse) pause() bool {
	if s.p.cfg.ChunkDelay <= 0 {
		return s.r.Context().Err() == nil
	}
	return sleepCtx(s.r, s.p.cfg.ChunkDelay)
}

// stream writes r as SSE; false if it was cut or the caller went away.
func (p *Provider) stream(w http.ResponseWriter, req *http.Request, r *response) bool {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	flush(w)
	s := &sse{w: w, r: req, p: p, cut: r.cutAfter}
	id := ids.Add(1)
	now := time.Now().Unix()
	chunk := int64(p.cfg.ChunkTokens)
	switch r.api {
	case apiChat:
		base := func() map[string]any {
			m := map[string]any{"id": fmt.Sprintf("chatcmpl-fake%d", id), "object": "chat.completion.chunk",
				"created": now, "model": r.model}
			if r.includeUsage {
				m["usage"] = nil
			}
			return m
		}
		for at := int64(0); at < r.output; at += chunk {
			n := min(chunk, r.output-at)
			delta := map[string]any{"content": text(at, n)}
			if at == 0 {
				delta["role"] = "assistant"
			}
			var finish any
			if at+n >= r.output {
				finish = "stop"
				if r.truncated() {
					finish = "length"
				}
			}
			m := base()
			m["choices"] = []any{map[string]any{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": nil}}
			if !s.pause() || !s.event("", m) {
				return false
			}
		}
		if r.includeUsage {
			m := base()
			m["choices"] = []any{}
			m["usage"] = chatUsage(r)
			if !s.event("", m) {
				return false
			}
		}
		if s.cut < 0 || s.n < s.cut {
			r.done()
		}
		return s.event("", "[DONE]")

	case apiResponses:
		seq := 0
		ev := func(typ string, m map[string]any) bool {
			m["type"] = typ
			m["sequence_number"] = seq
			seq++
			return s.event(typ, m)
		}
		if !ev("response.created", map[string]any{"response": responsesBody(id, now, r, "in_progress")}) {
			return false
		}
		for at := int64(0); at < r.output; at += chunk {
			n := min(chunk, r.output-at)
			if !s.pause() || !ev("response.output_text.delta", map[string]any{
				"item_id": fmt.Sprintf("msg_fake%d", id), "output_index": 0, "content_index": 0, "delta": text(at, n)}) {
				return false
			}
		}
		if s.cut < 0 || s.n < s.cut {
			r.done()
		}
		return ev("response.completed", map[string]any{"response": responsesBody(id, now, r, "completed")})

	case apiMessages:
		if !s.event("message_start", map[string]any{"type": "message_start", "message": map[string]any{
			"id": fmt.Sprintf("msg_fake%d", id), "type": "message", "role": "assistant", "model": r.model,
			"content": []any{}, "stop_reason": nil, "stop_sequence": nil,
			"usage": map[string]any{"input_tokens": r.input, "output_tokens": 1}}}) {
			return false
		}
		if !s.event("content_block_start", map[string]any{"type": "content_block_start", "index": 0,
			"content_block": map[string]any{"type": "text", "text": ""}}) {
			return false
		}
		for at := int64(0); at < r.output; at += chunk {
			n := min(chunk, r.output-at)
			if !s.pause() || !s.event("content_block_delta", map[string]any{"type": "content_block_delta", "index": 0,
				"delta": map[string]any{"type": "text_delta", "text": text(at, n)}}) {
				return false
			}
		}
		stop := "end_turn"
		if r.truncated() {
			stop = "max_tokens"
		}
		if !s.event("content_block_stop", map[string]any{"type": "content_block_stop", "index": 0}) ||
			!s.event("message_delta", map[string]any{"type": "message_delta",
				"delta": map[string]any{"stop_reason": stop, "stop_sequence": nil},
				"usage": map[string]any{"output_tokens": r.output}}) {
			return false
		}
		if s.cut < 0 || s.n < s.cut {
			r.done()
		}
		return s.event("message_stop", map[string]any{"type": "message_stop"})
	}
	return false
}
