package guard

import (
	"encoding/json"
	"net/http"
	"strings"
)

// apiFor is the API a request is for, by method and path suffix (so a base
// URL may carry a prefix such as /openai/v1).
func apiFor(r *http.Request) (API, bool) {
	if r.Method != http.MethodPost || r.URL == nil {
		return 0, false
	}
	path := strings.TrimSuffix(r.URL.Path, "/")
	switch {
	case strings.HasSuffix(path, "/chat/completions"):
		return ChatCompletions, true
	case strings.HasSuffix(path, "/responses"):
		return Responses, true
	case strings.HasSuffix(path, "/messages"):
		return Messages, true
	}
	return 0, false
}

// requestJSON is the part of a request body the guard reads. The prompt
// fields are kept raw: the estimator counts their bytes.
type requestJSON struct {
	Model               string          `json:"model"`
	MaxTokens           *int64          `json:"max_tokens"`
	MaxCompletionTokens *int64          `json:"max_completion_tokens"`
	MaxOutputTokens     *int64          `json:"max_output_tokens"`
	Stream              bool            `json:"stream"`
	StreamOptions       json.RawMessage `json:"stream_options"`

	Messages     json.RawMessage `json:"messages"`
	Input        json.RawMessage `json:"input"`
	System       json.RawMessage `json:"system"`
	Instructions json.RawMessage `json:"instructions"`
	Tools        json.RawMessage `json:"tools"`
	Functions    json.RawMessage `json:"functions"`
	Prompt       json.RawMessage `json:"prompt"`
}

// call is one guarded call as parsed from its request.
type call struct {
	api    API
	model  string
	stream bool
	// body is what is sent, include_usage added if need be.
	body []byte
	// stripUsage is set when the guard added include_usage to an OpenAI
	// chat stream: the extra usage chunk is taken out of the stream.
	stripUsage bool
	estimate   Cost
}

// parseCall reads a request body; false if it is not JSON with a model, in
// which case the request is sent unguarded.
func (g *Guard) parseCall(api API, body []byte) (call, bool) {
	var q requestJSON
	if err := json.Unmarshal(body, &q); err != nil || q.Model == "" {
		return call{}, false
	}
	c := call{api: api, model: q.Model, stream: q.Stream, body: body}
	maxOut, set := int64(0), false
	for _, v := range []*int64{q.MaxTokens, q.MaxCompletionTokens, q.MaxOutputTokens} {
		if v != nil {
			set = true
			maxOut = max(maxOut, *v)
		}
	}
	if !set {
		maxOut = g.cfg.DefaultMaxOutputTokens
	}
	c.estimate = Cost{Requests: 1, InputTokens: g.estimateInput(api, &q, body), OutputTokens: max(maxOut, 0)}
	if api == ChatCompletions && q.Stream && !includesUsage(q.StreamOptions) {
		if b, ok := withIncludeUsage(body); ok {
			c.body, c.stripUsage = b, true
		}
	}
	return c, true
}

// estimateInput is the Tokenizer's count, or the estimator's: the raw JSON
// bytes of the prompt fields (messages, input, system, instructions, tools,
// functions, prompt) / BytesPerToken, rounded up, plus 3. Counting the JSON
// rather than the text inside it adds the keys, quotes and escapes, about
// what the providers add per message, so the estimate errs high.
func (g *Guard) estimateInput(api API, q *requestJSON, body []byte) int64 {
	if g.cfg.Tokenizer != nil {
		if n, err := g.cfg.Tokenizer(api, q.Model, body); err == nil {
			return max(n, 0)
		}
	}
	n := len(q.Messages) + len(q.Input) + len(q.System) + len(q.Instructions) + len(q.Tools) + len(q.Functions) + len(q.Prompt)
	bpt := g.cfg.BytesPerToken
	return int64((n+bpt-1)/bpt) + 3
}

func includesUsage(streamOptions json.RawMessage) bool {
	var o struct {
		IncludeUsage bool `json:"include_usage"`
	}
	return len(streamOptions) > 0 && json.Unmarshal(streamOptions, &o) == nil && o.IncludeUsage
}

// withIncludeUsage returns body with stream_options.include_usage set to
// true, keeping every other field and stream option.
func withIncludeUsage(body []byte) ([]byte, bool) {
	var top map[string]json.RawMessage
	if json.Unmarshal(body, &top) != nil {
		return nil, false
	}
	opts := map[string]json.RawMessage{}
	if raw, ok := top["stream_options"]; ok && string(raw) != "null" {
		if json.Unmarshal(raw, &opts) != nil {
			return nil, false
		}
	}
	opts["include_usage"] = json.RawMessage("true")
	raw, err := json.Marshal(opts)
	if err != nil {
		return nil, false
	}
	top["stream_options"] = raw
	out, err := json.Marshal(top)
	if err != nil {
		return nil, false
	}
	return out, true
}
