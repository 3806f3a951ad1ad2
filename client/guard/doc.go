// Package guard is an outbound guard for AI provider calls: an
// http.RoundTripper that wraps a provider SDK's HTTP client and makes every
// call pay from a shared budget before it is sent.
//
//	g, err := guard.New(guard.Config{
//		Budget: func(c guard.Call) guard.Budget { return budgets[c.Model] },
//	})
//	if err != nil { ... }
//	client := openai.NewClient(
//		option.WithHTTPClient(&http.Client{Transport: g}),
//		option.WithMaxRetries(0), // the guard retries; see below
//	)
//
// For a POST to …/chat/completions, …/responses (OpenAI and compatible
// servers) or …/messages (Anthropic) with a JSON body naming a model, the
// guard:
//
//  1. reads the model and the largest of max_tokens, max_completion_tokens
//     and max_output_tokens (Config.DefaultMaxOutputTokens, 4096, when none
//     is set) and estimates the input tokens: the prompt fields' raw JSON
//     bytes / Config.BytesPerToken (3), rounded up, plus 3, an estimate that
//     errs high, or Config.Tokenizer's count;
//  2. reserves Cost{Requests: 1, InputTokens: estimate, OutputTokens: max}
//     from the Budget that Config.Budget returns for the call, waiting as
//     the Budget does;
//  3. sends it, asking an OpenAI chat stream for stream_options.include_usage
//     (and taking the extra usage chunk out of the stream again if the
//     caller did not ask for it);
//  4. settles the reservation with the usage the provider reports, in the
//     JSON body or in the stream's last usage event, when the response body
//     reaches EOF, is closed, or the request's context ends, whichever is
//     first, and never when RoundTrip returns. A response that did not end
//     complete (cut short, closed early, cancelled, no usage) settles at
//     the reservation; an attempt that got no 2xx cancels it.
//
// Anything else (other paths, GETs, bodies that are not JSON with a model)
// passes through untouched.
//
// # Retries
//
// A 429 tells the Budget to Block for the provider's wait (retry-after-ms,
// retry-after in seconds or as an HTTP date, else the reset header of the
// exhausted limit), so every process sharing the budget stops, not just
// this one; the guard then waits the whole of it, however long (attempts
// are bounded by Config.MaxAttempts, not the wait), unless it would outlast
// the request's deadline or the response says x-should-retry: false. 408,
// 409, 5xx and connection errors are retried with exponential backoff and
// full jitter (or the server's retry-after, if longer). Each attempt
// reserves anew and a refused attempt's reservation is cancelled, so a call
// is charged once, for the attempt that was served. Remaining headers
// (x-ratelimit-remaining-*, anthropic-ratelimit-*-remaining) on any
// response are passed to Budget.Lower.
//
// Provider SDKs retry too: openai-go and anthropic-sdk-go retry 2 times by
// default, 408/409/429/5xx and connection errors (openai-go v3.102.0 caps
// its backoff at 8s and gives up at once on a Retry-After above 2 minutes;
// anthropic-sdk-go v2.17.0 caps its backoff at 8s and takes Retry-After
// whole). The guard is correct
// either way: a response it gives up on carries x-should-retry: false,
// which both SDKs obey, and an SDK retry of an error goes through the guard
// again, reserving anew from a Budget that is still blocked. But every SDK
// retry multiplies the guard's attempts, so set option.WithMaxRetries(0).
//
// # Breaker and fallback
//
// A circuit breaker per host and model (sony/gobreaker) counts 5xx, 408,
// timeouts (Config.ResponseHeaderTimeout) and connection errors as
// failures; 429s, other 4xx and cancelled contexts count for nothing. An
// open breaker fails calls fast with ErrBreakerOpen before anything is
// reserved, or, with Config.Fallback.URL set, sends a canary share of them
// to the fallback, promotes the fallback to all of them once it has served
// a window of calls within its error-rate and p99 thresholds, and rolls it
// back when it crosses either.
//
// # Budget
//
// The guard depends on the small Budget and Reservation interfaces in this
// package, not on package client: Leasehold's client.Budget satisfies them
// through an adapter, and package guardtest has an in-memory one for tests.
//
// Guard is safe for concurrent use. Package guard imports nothing from this
// module and sony/gobreaker from outside it; the provider SDKs are only its
// tests' callers. See DESIGN.md for the decisions behind it.
package guard
