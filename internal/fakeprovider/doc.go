// Package fakeprovider is an in-process fake of the OpenAI and Anthropic HTTP
// APIs for tests and the AI demo: it enforces its own rate limits the way the
// providers do and answers with their header shapes, so a caller (the
// outbound guard, a provider SDK) can be tested without a network or a bill.
//
// Endpoints (POST, matched by path suffix, so a base URL may carry a prefix):
//
//   - OpenAI chat completions, /v1/chat/completions: JSON, or SSE with
//     "stream": true; usage comes in a final chunk with "choices": [] only
//     when stream_options.include_usage is true, then "data: [DONE]".
//   - OpenAI responses, /v1/responses: JSON, or SSE events response.created,
//     response.output_text.delta…, response.completed (with usage).
//   - Anthropic messages, /v1/messages: JSON, or SSE events message_start
//     (input usage), content_block_*, message_delta (output usage),
//     message_stop. max_tokens is required, as it is upstream.
//
// # Admission, as the providers count it
//
// Every model has a request bucket and a token bucket ([Limits]), each
// refilled continuously at limit per minute with capacity limit (a caller
// that has been idle for a minute may spend a whole minute's worth at once).
// A request is admitted only if the request bucket has 1 and the token bucket
// has input + max output tokens, where input is [CountInputTokens] of the body
// and max output is the largest of max_tokens, max_completion_tokens and
// max_output_tokens, or [Config.DefaultMaxTokens] when none is set: the
// providers charge max_tokens at admission. When the response ends the unused
// part of max output (max − actual) is given back to the token bucket if
// [Config.RefundUnusedOutput] is set, as Anthropic documents for its output
// limit; a stream cut short or a request the caller abandons refunds
// nothing. Optional separate input and output buckets
// (Limits.InputTokensPerMinute, OutputTokensPerMinute) model Anthropic's
// ITPM/OTPM.
//
// A refused request gets 429 with the provider's headers: OpenAI's
// retry-after (whole seconds, rounded up), retry-after-ms,
// x-ratelimit-{limit,remaining,reset}-{requests,tokens} with resets in Go's
// duration form ("6m0s", "1s", "20ms") and x-should-retry; Anthropic's
// retry-after (whole seconds) and anthropic-ratelimit-{requests,tokens,
// input-tokens,output-tokens}-{limit,remaining,reset} with RFC 3339 resets.
// A reset is the time until that bucket is full again; retry-after is the
// time until this request would fit. A request that could never fit (its
// cost exceeds the bucket's capacity) gets 429 with x-should-retry: false.
// Successful responses carry the same limit/remaining/reset headers.
//
// Output length is random in [1, max output] from a seeded generator
// ([Config.Seed]), or fixed by [Config.OutputTokens].
//
// Faults ([Provider.Inject]) apply to the next requests in order: a status
// (500, 503…), a hang until the caller gives up (a timeout), or a stream or
// JSON body cut after some chunks. [Provider.Spend] is an outside spender that
// drains a model's buckets directly, not through any guard. [Provider.Stats]
// reports the counters: requests, 429s, faults, tokens charged and served.
//
// The Provider is an http.Handler: serve it with httptest.NewServer, or call
// it in memory with [Provider.Transport], which needs no sockets and so runs
// inside a testing/synctest bubble, where the fake's clock and its latency
// are the bubble's fake time.
//
// fakeprovider imports nothing from this module. It is test support: nothing
// in a user's binary imports it.
package fakeprovider
