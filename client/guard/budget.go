package guard

import (
	"context"
	"time"
)

// Cost is what one provider call costs, per dimension. Spend is not here: a
// Budget derives it from the tokens with its own price table.
type Cost struct {
	// Requests is 1 for a call.
	Requests int64
	// InputTokens is the prompt's tokens: an estimate when reserving, the
	// provider's usage when settling (OpenAI's prompt_tokens or
	// input_tokens; Anthropic's input_tokens plus its cache creation and
	// cache read input tokens).
	InputTokens int64
	// OutputTokens is the reply's tokens: the request's max output when
	// reserving, the provider's usage when settling.
	OutputTokens int64
}

// Dimension is what a provider's remaining header counts. Values start at 1
// and are never reused.
type Dimension uint8

const (
	// Requests counts calls (x-ratelimit-*-requests,
	// anthropic-ratelimit-requests-*).
	Requests Dimension = iota + 1
	// InputTokens counts prompt tokens (anthropic-ratelimit-input-tokens-*).
	InputTokens
	// OutputTokens counts reply tokens (anthropic-ratelimit-output-tokens-*).
	OutputTokens
	// Tokens counts input and output tokens together, as OpenAI's TPM does
	// (x-ratelimit-*-tokens, anthropic-ratelimit-tokens-*).
	Tokens
)

func (d Dimension) String() string {
	switch d {
	case Requests:
		return "requests"
	case InputTokens:
		return "input-tokens"
	case OutputTokens:
		return "output-tokens"
	case Tokens:
		return "tokens"
	}
	return "unknown"
}

// Budget is what the guard needs from a shared budget: Leasehold's
// client.Budget through a small adapter, or an in-memory one in tests
// (package guardtest). Implementations must be safe for concurrent use. The
// guard calls every method on the goroutine of the request it guards, so
// Block and Lower should return quickly (record, and propagate in the
// background if that needs a round trip).
type Budget interface {
	// Reserve takes estimate from every limit of the budget, all or none,
	// waiting until it fits or ctx ends; like x/time/rate's WaitN, it
	// fails at once if estimate can never fit. The guard calls it before
	// every attempt it sends, and ends each reservation exactly once with
	// Settle or Cancel.
	Reserve(ctx context.Context, estimate Cost) (Reservation, error)
	// Block tells the budget that the provider refused a call and said to
	// wait: nothing should be reserved for wait from now, in any process
	// sharing the budget. A later Block may lengthen the block, never
	// shorten it.
	Block(ctx context.Context, wait time.Duration) error
	// Lower tells the budget that the provider says at most remaining of
	// dim are left until reset from now. It may lower what the budget
	// grants; it must never raise it.
	Lower(ctx context.Context, dim Dimension, remaining int64, reset time.Duration) error
}

// Reservation is one reserved call. The guard ends it exactly once, with
// Settle or Cancel; implementations should make both idempotent anyway.
type Reservation interface {
	// Settle charges actual instead of the estimate: below it refunds the
	// difference, above it is debt. A stream cut short, or a call the
	// caller abandoned, is settled at the estimate.
	Settle(ctx context.Context, actual Cost) error
	// Cancel gives the whole reservation back: the call was not served.
	Cancel() error
	// KeepAlive tells the budget the call is still running (a long
	// stream), so an in-flight slot or a reservation TTL does not expire
	// under it.
	KeepAlive(ctx context.Context) error
}
