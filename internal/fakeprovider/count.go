package fakeprovider

import "encoding/json"

// promptFields are the top-level request fields whose text a provider counts
// as input.
var promptFields = []string{"messages", "input", "system", "instructions", "tools", "prompt"}

// CountInputTokens is the fake's tokenizer: the bytes of every JSON string in
// the prompt fields (messages, input, system, instructions, tools, prompt),
// divided by 4 and rounded up, plus 3 tokens a message (an item of messages
// or of an input array) and 3 for the reply's priming, roughly as OpenAI
// documents for its chat format. A body that is not JSON counts 0.
func CountInputTokens(body []byte) int64 {
	var top map[string]json.RawMessage
	if json.Unmarshal(body, &top) != nil {
		return 0
	}
	var textBytes, messages int64
	for _, f := range promptFields {
		raw, ok := top[f]
		if !ok {
			continue
		}
		var v any
		if json.Unmarshal(raw, &v) != nil {
			continue
		}
		if arr, ok := v.([]any); ok && (f == "messages" || f == "input") {
			messages += int64(len(arr))
		}
		textBytes += stringBytes(v)
	}
	return (textBytes+3)/4 + 3*messages + 3
}

func stringBytes(v any) int64 {
	switch v := v.(type) {
	case string:
		return int64(len(v))
	case []any:
		var n int64
		for _, e := range v {
			n += stringBytes(e)
		}
		return n
	case map[string]any:
		var n int64
		for _, e := range v {
			n += stringBytes(e)
		}
		return n
	}
	return 0
}
