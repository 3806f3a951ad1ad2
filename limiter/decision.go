package limiter

import (
	"math"
	"time"
)

// Never is the RetryAfter of a request that no amount of waiting can satisfy,
// such as a take of more tokens than the burst.
const Never = time.Duration(math.MaxInt64)

// Decision is the outcome of one Take or Check.
//
// A denial is a Decision with Allowed false, not an error: the limiter decided.
type Decision struct {
	// Allowed reports whether the tokens were (or, for Check, would be) granted.
	Allowed bool
	// Remaining is the number of tokens a further Take at the same time could
	// get, after this decision. Never negative, never above the burst or limit.
	Remaining int64
	// RetryAfter is zero when allowed. When denied it is the time after now at
	// which the same request would first be allowed if nothing else happened in
	// between, or Never when it can never be allowed.
	RetryAfter time.Duration
	// ResetAfter is the time after now at which the limiter is back to its
	// full, untouched state if nothing else happens.
	ResetAfter time.Duration
}
