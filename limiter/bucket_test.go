package limiter

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// op is one step of a limiter step table.
type op int

const (
	opTake   op = iota + 1 // Take n (TakeSpan for a window)
	opCheck                // Check n: decision only, state unchanged
	opReturn               // Return n (for a window: the step's grant)
	opLeave                // TakeLeaving n, keep
)

func (o op) String() string {
	switch o {
	case opTake:
		return "take"
	case opCheck:
		return "check"
	case opReturn:
		return "return"
	case opLeave:
		return "leave"
	}
	return "op?"
}

// bucketStep is one row of a bucket step table: at log time at, do op with n
// (and keep), expect the decision want (ignored for a return), then expect
// Available(s, at) == avail.
type bucketStep struct {
	name  string
	at    int64
	op    op
	n     int64
	keep  int64
	want  Decision
	avail int64
}

// runBucketSteps runs the steps in order on one state, starting from st.
func runBucketSteps(t *testing.T, b TokenBucket, st BucketState, steps []bucketStep) {
	t.Helper()
	s := &st
	for i, step := range steps {
		before := *s
		var got Decision
		switch step.op {
		case opTake:
			got = b.Take(s, step.at, step.n)
		case opCheck:
			got = b.Check(*s, step.at, step.n)
		case opLeave:
			got = b.TakeLeaving(s, step.at, step.n, step.keep)
		case opReturn:
			b.Return(s, step.at, step.n)
		}
		if step.op != opReturn {
			if diff := cmp.Diff(step.want, got); diff != "" {
				t.Errorf("step %d %q: %v(at=%d, n=%d, keep=%d) decision mismatch (-want +got):\n%s",
					i, step.name, step.op, step.at, step.n, step.keep, diff)
			}
		}
		if (step.op == opCheck || !got.Allowed && step.op != opReturn) && *s != before {
			t.Errorf("step %d %q: %v changed the state from %+v to %+v", i, step.name, step.op, before, *s)
		}
		if a := b.Available(*s, step.at); a != step.avail {
			t.Errorf("step %d %q: Available = %d, want %d (TAT %d)", i, step.name, a, step.avail, s.TAT)
		}
	}
}

func mustBucket(t testing.TB, rate int64, period time.Duration, burst int64) TokenBucket {
	t.Helper()
	b, err := NewTokenBucket(rate, period, burst)
	if err != nil {
		t.Fatalf("NewTokenBucket(%d, %v, %d): %v", rate, period, burst, err)
	}
	return b
}

func TestBucketSteps(t *testing.T) {
	const year = 365 * 24 * time.Hour
	tests := []struct {
		name   string
		rate   int64
		period time.Duration
		burst  int64
		start  BucketState
		steps  []bucketStep
	}{
		{
			// 10 per second, burst 5: one token costs 100ms, the burst 500ms.
			name: "fresh full bucket", rate: 10, period: time.Second, burst: 5,
			steps: []bucketStep{
				{name: "check all", at: 0, op: opCheck, n: 5,
					want: Decision{Allowed: true, Remaining: 0, ResetAfter: 500 * time.Millisecond}, avail: 5},
				{name: "nothing", at: 0, op: opTake, n: 0,
					want: Decision{Allowed: true, Remaining: 5}, avail: 5},
				{name: "take 2", at: 0, op: opTake, n: 2,
					want: Decision{Allowed: true, Remaining: 3, ResetAfter: 200 * time.Millisecond}, avail: 3},
				{name: "take the other 3", at: 0, op: opTake, n: 3,
					want: Decision{Allowed: true, Remaining: 0, ResetAfter: 500 * time.Millisecond}, avail: 0},
				// Empty at 0: one token is back after 100ms.
				{name: "empty", at: 0, op: opTake, n: 1,
					want: Decision{RetryAfter: 100 * time.Millisecond, ResetAfter: 500 * time.Millisecond}, avail: 0},
				// 0.99999999 tokens: still none, 1ns to go.
				{name: "1ns early", at: 100*ms - 1, op: opTake, n: 1,
					want: Decision{RetryAfter: 1, ResetAfter: 400*time.Millisecond + 1}, avail: 0},
				{name: "on time", at: 100 * ms, op: opTake, n: 1,
					want: Decision{Allowed: true, ResetAfter: 500 * time.Millisecond}, avail: 0},
				// TAT is 600ms: at 350ms the debt is 250ms, 2.5 tokens short of
				// 5, so 2.5 tokens; 3 need the debt down to 200ms.
				{name: "partial refill", at: 350 * ms, op: opCheck, n: 3,
					want: Decision{Remaining: 2, RetryAfter: 50 * time.Millisecond, ResetAfter: 250 * time.Millisecond}, avail: 2},
				{name: "full again", at: 600 * ms, op: opCheck, n: 0,
					want: Decision{Allowed: true, Remaining: 5}, avail: 5},
				{name: "long idle stays at burst", at: 1000 * sec, op: opCheck, n: 5,
					want: Decision{Allowed: true, ResetAfter: 500 * time.Millisecond}, avail: 5},
			},
		},
		{
			// 3 per 10ns, burst 3: cost(1) = ⌈10/3⌉ = 4ns, cost(2) = ⌈20/3⌉ = 7ns,
			// cost(3) = 10ns. Exactly, one token refills in 3⅓ns.
			name: "drain and refill with inexact costs", rate: 3, period: 10, burst: 3,
			steps: []bucketStep{
				{name: "drain", at: 0, op: opTake, n: 3,
					want: Decision{Allowed: true, ResetAfter: 10}, avail: 0},
				// Debt 10ns; a token needs debt <= ⌊(3-1)·10/3⌋ = 6: 4ns to wait
				// (the exact bucket has 1 token at 3⅓ns, so at 4ns too).
				{name: "empty", at: 0, op: opTake, n: 1,
					want: Decision{RetryAfter: 4, ResetAfter: 10}, avail: 0},
				// Exact level at 3ns is 0.9.
				{name: "0.9 tokens", at: 3, op: opTake, n: 1,
					want: Decision{RetryAfter: 1, ResetAfter: 7}, avail: 0},
				// TAT becomes 10+4 = 14; exact level 1.2-1 = 0.2, fast 3-10·0.3 = 0.
				{name: "first refilled token", at: 4, op: opTake, n: 1,
					want: Decision{Allowed: true, ResetAfter: 10}, avail: 0},
				// At 11: debt 3 <= ⌊1·10/3⌋ = 3; exact level 0.2+2.1 = 2.3.
				{name: "two more", at: 11, op: opTake, n: 2,
					want: Decision{Allowed: true, ResetAfter: 10}, avail: 0},
			},
		},
		{
			// 2 per 3ns, burst 3: cost(2) = 3ns exactly, but τ = ⌈3·3/2⌉ = 5ns is
			// rounded up. After taking 2 at 0 the exact level at 1ns is 1⅔, so 2
			// must be denied; comparing cost(2) = 3 with τ-debt = 5-2 = 3 admitted
			// it (the over-admission the reference test found).
			name: "tau rounding never over-admits", rate: 2, period: 3, burst: 3,
			steps: []bucketStep{
				{name: "take 2", at: 0, op: opTake, n: 2,
					want: Decision{Allowed: true, Remaining: 1, ResetAfter: 3}, avail: 1},
				// Debt 2 > ⌊(3-2)·3/2⌋ = 1: 1ns to wait. Remaining ⌊1⅔⌋ = 1.
				{name: "2 more at 1.67 tokens", at: 1, op: opTake, n: 2,
					want: Decision{Remaining: 1, RetryAfter: 1, ResetAfter: 2}, avail: 1},
				// Exact level 2⅓ at 2ns.
				{name: "2 more at 2.33 tokens", at: 2, op: opTake, n: 2,
					want: Decision{Allowed: true, Remaining: 0, ResetAfter: 4}, avail: 0},
			},
		},
		{
			name: "burst 0 admits nothing", rate: 1, period: time.Second, burst: 0,
			steps: []bucketStep{
				{name: "one", at: 0, op: opTake, n: 1,
					want: Decision{RetryAfter: Never}, avail: 0},
				{name: "check one", at: 5 * sec, op: opCheck, n: 1,
					want: Decision{RetryAfter: Never}, avail: 0},
				{name: "zero", at: 5 * sec, op: opTake, n: 0,
					want: Decision{Allowed: true}, avail: 0},
				{name: "leave zero", at: 5 * sec, op: opLeave, n: 0, keep: 0,
					want: Decision{Allowed: true}, avail: 0},
				{name: "return", at: 5 * sec, op: opReturn, n: 3, avail: 0},
				{name: "still nothing", at: 6 * sec, op: opTake, n: 1,
					want: Decision{RetryAfter: Never}, avail: 0},
			},
		},
		{
			name: "burst 1", rate: 1, period: time.Second, burst: 1,
			steps: []bucketStep{
				{name: "take", at: 10 * sec, op: opTake, n: 1,
					want: Decision{Allowed: true, ResetAfter: time.Second}, avail: 0},
				{name: "again", at: 10 * sec, op: opTake, n: 1,
					want: Decision{RetryAfter: time.Second, ResetAfter: time.Second}, avail: 0},
				{name: "two", at: 10 * sec, op: opTake, n: 2,
					want: Decision{RetryAfter: Never, ResetAfter: time.Second}, avail: 0},
				{name: "1ns early", at: 11*sec - 1, op: opTake, n: 1,
					want: Decision{RetryAfter: 1, ResetAfter: 1}, avail: 0},
				{name: "on time", at: 11 * sec, op: opTake, n: 1,
					want: Decision{Allowed: true, ResetAfter: time.Second}, avail: 0},
			},
		},
		{
			name: "n above burst is never allowed", rate: 100, period: time.Second, burst: 10,
			steps: []bucketStep{
				{name: "11 of 10", at: 0, op: opTake, n: 11,
					want: Decision{Remaining: 10, RetryAfter: Never}, avail: 10},
				{name: "huge", at: 0, op: opTake, n: math.MaxInt64,
					want: Decision{Remaining: 10, RetryAfter: Never}, avail: 10},
				// 4 tokens cost 40ms; a later impossible take still reports them.
				{name: "take 4", at: 0, op: opTake, n: 4,
					want: Decision{Allowed: true, Remaining: 6, ResetAfter: 40 * time.Millisecond}, avail: 6},
				{name: "11 after 4", at: 0, op: opCheck, n: 11,
					want: Decision{Remaining: 6, RetryAfter: Never, ResetAfter: 40 * time.Millisecond}, avail: 6},
			},
		},
		{
			name: "negative n", rate: 100, period: time.Second, burst: 10,
			steps: []bucketStep{
				{name: "take -1", at: 0, op: opTake, n: -1,
					want: Decision{Remaining: 10, RetryAfter: Never}, avail: 10},
				{name: "take min int", at: 0, op: opTake, n: math.MinInt64,
					want: Decision{Remaining: 10, RetryAfter: Never}, avail: 10},
				{name: "drain", at: 0, op: opTake, n: 10,
					want: Decision{Allowed: true, ResetAfter: 100 * time.Millisecond}, avail: 0},
				{name: "return -5 does nothing", at: 0, op: opReturn, n: -5, avail: 0},
				{name: "return min int does nothing", at: 0, op: opReturn, n: math.MinInt64, avail: 0},
			},
		},
		{
			// 1 per second, burst 2.
			name: "time going backwards", rate: 1, period: time.Second, burst: 2,
			steps: []bucketStep{
				{name: "drain at 10s", at: 10 * sec, op: opTake, n: 2,
					want: Decision{Allowed: true, ResetAfter: 2 * time.Second}, avail: 0},
				{name: "one back at 11s", at: 11 * sec, op: opCheck, n: 1,
					want: Decision{Allowed: true, ResetAfter: 2 * time.Second}, avail: 1},
				// At 5s the TAT (12s) is 7s ahead: no tokens, and a token needs
				// the debt down to 1s, 6s later.
				{name: "take at 5s", at: 5 * sec, op: opTake, n: 1,
					want: Decision{RetryAfter: 6 * time.Second, ResetAfter: 7 * time.Second}, avail: 0},
				{name: "return at 5s", at: 5 * sec, op: opReturn, n: 1, avail: 0},
				// The 1s refund moved TAT back to 11s, so at 11s it is full,
				// exactly what returning the token at 11s would have done.
				{name: "full at 11s", at: 11 * sec, op: opCheck, n: 2,
					want: Decision{Allowed: true, ResetAfter: 2 * time.Second}, avail: 2},
				{name: "min int64", at: math.MinInt64, op: opTake, n: 1,
					want: Decision{RetryAfter: time.Duration(math.MaxInt64 - sec), ResetAfter: Never}, avail: 0},
				{name: "negative time", at: -5 * sec, op: opCheck, n: 0,
					want: Decision{Allowed: true, ResetAfter: 16 * time.Second}, avail: 0},
				{name: "state intact", at: 11 * sec, op: opTake, n: 2,
					want: Decision{Allowed: true, ResetAfter: 2 * time.Second}, avail: 0},
			},
		},
		{
			// 1 per second, burst 2. A refund larger than the debt leaves the
			// bucket full at now, not full since some earlier time: a take
			// at an earlier time must still count as at now.
			name: "return clamps at now", rate: 1, period: time.Second, burst: 2,
			steps: []bucketStep{
				{name: "take 1 at 10s", at: 10 * sec, op: opTake, n: 1,
					want: Decision{Allowed: true, Remaining: 1, ResetAfter: time.Second}, avail: 1},
				{name: "return 5 at 10s", at: 10 * sec, op: opReturn, n: 5, avail: 2},
				// TAT is 10s: at 8s the debt is 2s, no token; with the refund
				// taken to TAT 6s, 2 tokens would be taken "at 8s" and 2 more
				// at 10s.
				{name: "take 2 at 8s", at: 8 * sec, op: opTake, n: 2,
					want: Decision{RetryAfter: 2 * time.Second, ResetAfter: 2 * time.Second}, avail: 0},
				{name: "take 2 at 10s", at: 10 * sec, op: opTake, n: 2,
					want: Decision{Allowed: true, ResetAfter: 2 * time.Second}, avail: 0},
			},
		},
		{
			name: "return never above burst", rate: 10, period: time.Second, burst: 3,
			steps: []bucketStep{
				{name: "take 1", at: 0, op: opTake, n: 1,
					want: Decision{Allowed: true, Remaining: 2, ResetAfter: 100 * time.Millisecond}, avail: 2},
				{name: "return 5", at: 0, op: opReturn, n: 5, avail: 3},
				{name: "return to a full bucket", at: 0, op: opReturn, n: 5, avail: 3},
				{name: "still burst", at: 0, op: opTake, n: 3,
					want: Decision{Allowed: true, ResetAfter: 300 * time.Millisecond}, avail: 0},
				{name: "not 4", at: 0, op: opCheck, n: 1,
					want: Decision{RetryAfter: 100 * time.Millisecond, ResetAfter: 300 * time.Millisecond}, avail: 0},
			},
		},
		{
			// 3 per 10ns: a token costs ⌈10/3⌉ = 4ns but refunds ⌊10/3⌋ = 3ns.
			name: "refund rounds down", rate: 3, period: 10, burst: 3,
			steps: []bucketStep{
				// The 4ns cost is 1.2 tokens: ⌊3-1.2⌋ = 1 left, not 2 (within the
				// documented 1ns of loss per take).
				{name: "take 1", at: 100, op: opTake, n: 1,
					want: Decision{Allowed: true, Remaining: 1, ResetAfter: 4}, avail: 1},
				{name: "not 2 more", at: 100, op: opCheck, n: 2,
					want: Decision{Remaining: 1, RetryAfter: 1, ResetAfter: 4}, avail: 1},
				// TAT 101: debt 1ns is 0.3 tokens short of full.
				{name: "return 1", at: 100, op: opReturn, n: 1, avail: 2},
				{name: "full 1ns later", at: 101, op: opCheck, n: 3,
					want: Decision{Allowed: true, ResetAfter: 10}, avail: 3},
			},
		},
		{
			// Rate MaxInt64 per ns: every cost is 1ns, one ns refills everything.
			name: "huge rate", rate: math.MaxInt64, period: 1, burst: math.MaxInt64,
			steps: []bucketStep{
				{name: "take all", at: 0, op: opTake, n: math.MaxInt64,
					want: Decision{Allowed: true, ResetAfter: 1}, avail: 0},
				{name: "empty", at: 0, op: opTake, n: 1,
					want: Decision{RetryAfter: 1, ResetAfter: 1}, avail: 0},
				{name: "all again 1ns later", at: 1, op: opTake, n: math.MaxInt64,
					want: Decision{Allowed: true, ResetAfter: 1}, avail: 0},
				// One token costs 1ns too: the rest of the nanosecond is lost to
				// rounding against the caller.
				{name: "one token", at: 5, op: opTake, n: 1,
					want: Decision{Allowed: true, ResetAfter: 1}, avail: 0},
			},
		},
		{
			// 1 per ns, burst 10: the TAT moves 1ns per token.
			name: "period 1ns", rate: 1, period: 1, burst: 10,
			steps: []bucketStep{
				{name: "drain", at: 1000, op: opTake, n: 10,
					want: Decision{Allowed: true, ResetAfter: 10}, avail: 0},
				{name: "3 back", at: 1003, op: opCheck, n: 4,
					want: Decision{Remaining: 3, RetryAfter: 1, ResetAfter: 7}, avail: 3},
				{name: "4 back", at: 1004, op: opTake, n: 4,
					want: Decision{Allowed: true, ResetAfter: 10}, avail: 0},
			},
		},
		{
			// 1 per year, burst 2: a token costs 31,536,000s.
			name: "period of a year", rate: 1, period: year, burst: 2,
			steps: []bucketStep{
				{name: "drain", at: 0, op: opTake, n: 2,
					want: Decision{Allowed: true, ResetAfter: 2 * year}, avail: 0},
				{name: "1ns before a year", at: int64(year) - 1, op: opTake, n: 1,
					want: Decision{RetryAfter: 1, ResetAfter: year + 1}, avail: 0},
				{name: "a year", at: int64(year), op: opTake, n: 1,
					want: Decision{Allowed: true, ResetAfter: 2 * year}, avail: 0},
				{name: "refund a token", at: int64(year), op: opReturn, n: 1, avail: 1},
			},
		},
		{
			// 1 per second, burst 10. TakeLeaving(n, keep) needs n+keep tokens
			// and takes only n.
			name: "take leaving", rate: 1, period: time.Second, burst: 10,
			steps: []bucketStep{
				{name: "3 leaving 5", at: 0, op: opLeave, n: 3, keep: 5,
					want: Decision{Allowed: true, Remaining: 7, ResetAfter: 3 * time.Second}, avail: 7},
				// 7 tokens < 8 needed; 8 is there once the debt of 3s is 2s.
				{name: "3 leaving 5 again", at: 0, op: opLeave, n: 3, keep: 5,
					want: Decision{Remaining: 7, RetryAfter: time.Second, ResetAfter: 3 * time.Second}, avail: 7},
				{name: "0 leaving 7", at: 0, op: opLeave, n: 0, keep: 7,
					want: Decision{Allowed: true, Remaining: 7, ResetAfter: 3 * time.Second}, avail: 7},
				{name: "0 leaving 8", at: 0, op: opLeave, n: 0, keep: 8,
					want: Decision{Remaining: 7, RetryAfter: time.Second, ResetAfter: 3 * time.Second}, avail: 7},
				{name: "keep beyond burst", at: 0, op: opLeave, n: 1, keep: 10,
					want: Decision{Remaining: 7, RetryAfter: Never, ResetAfter: 3 * time.Second}, avail: 7},
				{name: "negative keep", at: 0, op: opLeave, n: 1, keep: -1,
					want: Decision{Remaining: 7, RetryAfter: Never, ResetAfter: 3 * time.Second}, avail: 7},
				// A plain take is not held back by an earlier keep.
				{name: "plain take of 7", at: 0, op: opTake, n: 7,
					want: Decision{Allowed: true, Remaining: 0, ResetAfter: 10 * time.Second}, avail: 0},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := mustBucket(t, tt.rate, tt.period, tt.burst)
			runBucketSteps(t, b, tt.start, tt.steps)
		})
	}
}

func TestNewTokenBucket(t *testing.T) {
	const year = 365 * 24 * time.Hour
	tests := []struct {
		name       string
		rate       int64
		period     time.Duration
		burst      int64
		wantErrors int // 0: valid
	}{
		{name: "valid", rate: 10, period: time.Second, burst: 5},
		{name: "burst 0", rate: 10, period: time.Second, burst: 0},
		{name: "rate 0", rate: 0, period: time.Second, burst: 5, wantErrors: 1},
		{name: "negative rate", rate: -1, period: time.Second, burst: 5, wantErrors: 1},
		{name: "period 0", rate: 1, period: 0, burst: 5, wantErrors: 1},
		{name: "negative period", rate: 1, period: -time.Second, burst: 5, wantErrors: 1},
		{name: "negative burst", rate: 1, period: time.Second, burst: -1, wantErrors: 1},
		{name: "everything wrong", rate: 0, period: 0, burst: -1, wantErrors: 3},
		{name: "rate and burst wrong", rate: math.MinInt64, period: time.Second, burst: math.MinInt64, wantErrors: 2},
		// cost(burst) must be below MaxRefill = 2^62ns: 146 years of one token
		// per year is 4.604e18ns < 2^62 ≈ 4.612e18ns, 147 years is more.
		{name: "146 tokens a year", rate: 1, period: year, burst: 146},
		{name: "refill too long", rate: 1, period: year, burst: 147, wantErrors: 1},
		{name: "refill just below MaxRefill", rate: 1, period: 1, burst: 1<<62 - 1},
		{name: "refill exactly MaxRefill", rate: 1, period: 1, burst: 1 << 62, wantErrors: 1},
		{name: "refill overflows", rate: 1, period: time.Duration(math.MaxInt64), burst: math.MaxInt64, wantErrors: 1},
		{name: "huge everything", rate: math.MaxInt64, period: time.Duration(math.MaxInt64), burst: math.MaxInt64, wantErrors: 1},
		{name: "huge rate and burst", rate: math.MaxInt64, period: 1, burst: math.MaxInt64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := NewTokenBucket(tt.rate, tt.period, tt.burst)
			if got := errCount(err); got != tt.wantErrors {
				t.Fatalf("NewTokenBucket(%d, %v, %d) = %v: %d errors, want %d", tt.rate, tt.period, tt.burst, err, got, tt.wantErrors)
			}
			if err != nil {
				if !errors.Is(err, ErrInvalidLimit) {
					t.Errorf("error %v does not wrap ErrInvalidLimit", err)
				}
				if b != (TokenBucket{}) {
					t.Errorf("failed constructor returned %+v, want the zero value", b)
				}
				return
			}
			if b.Rate() != tt.rate || b.Period() != tt.period || b.Burst() != tt.burst {
				t.Errorf("accessors = (%d, %v, %d), want (%d, %v, %d)", b.Rate(), b.Period(), b.Burst(), tt.rate, tt.period, tt.burst)
			}
		})
	}
}

func TestBucketCostAndTokens(t *testing.T) {
	tests := []struct {
		name      string
		rate      int64
		period    time.Duration
		n         int64
		wantCost  time.Duration
		d         time.Duration
		wantToken int64
	}{
		// 3 per 10ns: a token every 3⅓ns.
		{name: "inexact", rate: 3, period: 10, n: 1, wantCost: 4, d: 4, wantToken: 1},
		{name: "inexact two", rate: 3, period: 10, n: 2, wantCost: 7, d: 6, wantToken: 1},
		{name: "exact", rate: 3, period: 9, n: 3, wantCost: 9, d: 9, wantToken: 3},
		{name: "zero and negative", rate: 3, period: 10, n: -4, wantCost: 0, d: -4, wantToken: 0},
		// MaxInt64 tokens at 1 per hour overflow: saturate.
		{name: "saturating", rate: 1, period: time.Hour, n: math.MaxInt64, wantCost: time.Duration(math.MaxInt64),
			d: time.Duration(math.MaxInt64), wantToken: math.MaxInt64 / int64(time.Hour)},
		{name: "huge rate", rate: math.MaxInt64, period: 1, n: math.MaxInt64, wantCost: 1, d: 2, wantToken: math.MaxInt64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := mustBucket(t, tt.rate, tt.period, 0)
			if got := b.Cost(tt.n); got != tt.wantCost {
				t.Errorf("Cost(%d) = %d, want %d", tt.n, got, tt.wantCost)
			}
			if got := b.Tokens(tt.d); got != tt.wantToken {
				t.Errorf("Tokens(%d) = %d, want %d", tt.d, got, tt.wantToken)
			}
		})
	}
}

// TestBucketAvailableMatchesCheck: Available(s, now) >= n iff Check(s, now, n)
// is allowed, for every n in [0, burst], over random configurations and states
// anywhere from full to τ in debt (and beyond, as a backwards clock makes it).
func TestBucketAvailableMatchesCheck(t *testing.T) {
	rng, seed := newRand(t)
	for i := range 2000 {
		rate, period, burst := randBucketParams(rng)
		burst = min(burst, 200)
		b := mustBucket(t, rate, period, burst)
		tau := int64(b.Cost(burst))
		now := int64(1 << 50)
		s := BucketState{TAT: now - 5 + rng.Int64N(tau+10)}
		if rng.IntN(10) == 0 {
			s.TAT = now + tau + rng.Int64N(1<<40) // as seen from an earlier now
		}
		avail := b.Available(s, now)
		for n := int64(0); n <= burst; n++ {
			if got, want := b.Check(s, now, n).Allowed, avail >= n; got != want {
				t.Fatalf("seed %d case %d (rate %d per %d, burst %d, debt %d): Check(%d).Allowed = %v, Available = %d",
					seed, i, rate, period, burst, s.TAT-now, n, got, avail)
			}
		}
	}
}

// TestBucketBackwardsNeverMoreTokens: at an earlier now a bucket never holds more
// than at a later one, and whatever a take at an earlier time may do to the
// state, a take at the later time could have done it too.
func TestBucketBackwardsNeverMoreTokens(t *testing.T) {
	rng, seed := newRand(t)
	for i := range 2000 {
		rate, period, burst := randBucketParams(rng)
		b := mustBucket(t, rate, period, burst)
		tau := int64(b.Cost(burst))
		late := int64(1 << 50)
		s := BucketState{TAT: late - 5 + rng.Int64N(tau+6)} // never beyond late+τ
		early := late - rng.Int64N(tau+10)
		if rng.IntN(8) == 0 {
			early = math.MinInt64 + rng.Int64N(10)
		}
		if ae, al := b.Available(s, early), b.Available(s, late); ae > al {
			t.Fatalf("seed %d case %d: Available at %d is %d, more than %d at %d", seed, i, early, ae, al, late)
		}
		n := randCount(rng, burst)
		atEarly, atLate := s, s
		if b.Take(&atEarly, early, n).Allowed && !b.Take(&atLate, late, n).Allowed {
			t.Fatalf("seed %d case %d: take %d allowed at %d but not at %d", seed, i, n, early, late)
		}
		if atEarly.TAT > late+tau {
			t.Fatalf("seed %d case %d: a take at %d left the TAT %d, more than τ=%d past %d", seed, i, early, atEarly.TAT, tau, late)
		}
	}
}

func TestBucketEmpty(t *testing.T) {
	b, err := NewTokenBucket(3, 10, 6) // 6 tokens refill in 20ns
	if err != nil {
		t.Fatal(err)
	}
	s := b.Empty(100)
	if got := b.Available(s, 100); got != 0 {
		t.Errorf("Available at now = %d, want 0", got)
	}
	if got := b.Available(s, 120); got != 6 {
		t.Errorf("Available after the whole refill time = %d, want 6", got)
	}
	if !b.Full(s, 120) || b.Full(s, 119) {
		t.Errorf("Full at 119/120 = %v/%v, want false/true", b.Full(s, 119), b.Full(s, 120))
	}
}
