package client

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// Dimension is what a Budget's Rule counts of a call's Cost. Values are
// stable.
type Dimension int

const (
	// Requests counts calls: Cost.Requests, 0 counting as 1.
	Requests Dimension = 1
	// InputTokens counts prompt tokens: Cost.InputTokens.
	InputTokens Dimension = 2
	// OutputTokens counts reply tokens: Cost.OutputTokens.
	OutputTokens Dimension = 3
	// Tokens counts input and output tokens together, as OpenAI's TPM does.
	Tokens Dimension = 4
	// InFlight counts reservations not yet settled or cancelled: a rule of
	// it caps the calls in flight at once, over every process (its Limit's
	// Rate is the cap; Per is ignored).
	InFlight Dimension = 5
	// Spend counts micro-USD, derived from the tokens through the rule's
	// Price.
	Spend Dimension = 6
)

// String returns the dimension's name as it appears in a rule's key:
// "requests", "input-tokens", "output-tokens", "tokens", "in-flight" or
// "spend".
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
	case InFlight:
		return "in-flight"
	case Spend:
		return "spend"
	}
	return fmt.Sprintf("Dimension(%d)", int(d))
}

// Cost is what one call costs: an estimate when reserving (the prompt's
// tokens and the request's max output tokens, which is what the providers
// count at admission), what the provider reports when settling. Negative
// fields are invalid.
type Cost struct {
	// Requests is how many calls the cost is; 0 means 1, when reserving
	// and when settling: a reservation is a call, and Cost{InputTokens:
	// 500, OutputTokens: 1000} is one call on a Requests rule. Set it
	// above 1 for a call that counts as several (a batch).
	Requests     int64
	InputTokens  int64
	OutputTokens int64
}

// calls returns the calls c counts on a Requests rule: Requests, or 1 if 0.
func (c Cost) calls() int64 {
	if c.Requests == 0 {
		return 1
	}
	return c.Requests
}

// A Price is what a model's tokens cost, in micro-USD (millionths of a US
// dollar) per million tokens: $2.50 per million input tokens is
// InputPerMillion 2_500_000. A call's spend is rounded up to a whole
// micro-USD.
type Price struct {
	InputPerMillion  int64
	OutputPerMillion int64
}

// spend returns the micro-USD c costs at p, rounded up; math.MaxInt64 if
// that overflows.
func (p Price) spend(c Cost) int64 {
	in, out := mul128(c.InputTokens, p.InputPerMillion), mul128(c.OutputTokens, p.OutputPerMillion)
	lo, carry := bits.Add64(in[1], out[1], 0)
	hi, over := bits.Add64(in[0], out[0], carry)
	if over != 0 || hi >= 1e6 {
		return math.MaxInt64
	}
	q, r := bits.Div64(hi, lo, 1e6)
	if r != 0 {
		q++
	}
	if q > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(q)
}

// mul128 returns a·b, for a, b >= 0, as {hi, lo}.
func mul128(a, b int64) [2]uint64 {
	hi, lo := bits.Mul64(uint64(max(a, 0)), uint64(max(b, 0)))
	return [2]uint64{hi, lo}
}

// NoDebt as a Rule's MaxDebt lets it owe nothing: a settle above the
// reservation charges only what the rule still holds, and forgives the rest.
const NoDebt = -1

// A Rule is one limit of a Budget: a limit on one Dimension of a call's
// cost, kept by the cluster under its own key (the Budget's scope, "/",
// the dimension; see Budget.Keys).
type Rule struct {
	// Counts is the dimension the rule limits.
	Counts Dimension
	// Limit is the rule's limit: a token bucket (the default algorithm;
	// sliding windows are not budget rules), or for InFlight the most
	// reservations open at once in Rate (Per, Burst and Strict ignored) and
	// MaxLease the longest a slot is held without being renewed (default
	// 10s; see Reservation.KeepAlive). The cluster keeps the first
	// definition of a key, as for a Limiter.
	Limit Limit
	// MaxDebt is how many tokens the rule's key may owe when calls settle
	// above what they reserved: 0 means the rule's burst (see DESIGN.md),
	// NoDebt none, a positive number that many. The bound on what the rule
	// charges in any interval Δ is Burst + MaxDebt + Rate·(Δ + MaxLease).
	// It is a bound on what the cluster charged, not on what calls used:
	// usage above a reservation that the key cannot owe is forgiven, and
	// limited by nothing (Stats.Forgiven counts it). So reserve the most a
	// call can use: for output tokens, the request's max output tokens.
	// Ignored for InFlight.
	MaxDebt int64
	// Price converts a call's tokens into micro-USD for a Spend rule;
	// required there, and only there.
	Price Price
}

// amount returns what cost takes from a rule counting d (priced at p): one
// slot for InFlight, whatever the cost.
func amount(d Dimension, p Price, c Cost) int64 {
	switch d {
	case Requests:
		return c.calls()
	case InputTokens:
		return c.InputTokens
	case OutputTokens:
		return c.OutputTokens
	case Tokens:
		if s := c.InputTokens + c.OutputTokens; s >= c.InputTokens {
			return s
		}
		return math.MaxInt64
	case InFlight:
		return 1
	case Spend:
		return p.spend(c)
	}
	return 0
}

// Defaults of a Budget's rules.
const (
	// defaultSlotLease is an InFlight rule's MaxLease when its Limit names
	// none: how long a slot outlives a process that died holding it.
	defaultSlotLease = 10 * time.Second
)

// A Budget is several limits on one scope (an AI provider's key and model,
// say), each a Rule counting one dimension of a call's cost, reserved
// together or not at all: a call that fits one rule and not another takes
// from neither. Reserve the call's estimate before it is sent, Settle it
// with the usage the provider reports (or Cancel it if nothing was sent).
//
// On warm leases a Reserve and its Settle take from, and give back to,
// tokens this process holds, with no round trip; an InFlight rule costs a
// round trip per reservation (its slot is the cluster's, so that it comes
// back when the call ends, or when this process dies), two beside a rule
// whose key grants no leases (the slot is taken first, apart). Get a
// Budget from [Client.Budget]. It is safe for concurrent use.
type Budget struct {
	c     *Client
	scope string
	given []Rule // as the caller gave them, for Client.Budget's comparison
	rules []budgetRule
	slot  int   // index of the InFlight rule in rules; -1: none
	err   error // sticky: the rules are invalid
	// brokenUndo, if positive, is 1 + the rule whose tokens a reservation
	// refused on another rule does not put back: the known-bad variant
	// that TestAllOrNothingUnderConcurrency must catch.
	brokenUndo int

	// blocked is when the last Block ends (Client clock); nothing is
	// reserved before it. Read on the fast path.
	blocked    atomic.Int64
	refreshing atomic.Bool  // a refresh goroutine is running
	active     atomic.Int64 // the last slow-path reservation (Client clock), for idle forgetting
	records    sync.Pool    // *reservation
	lateStreak lateStreak   // reservations' grants answered too late, in a row
	// reaskAt is when reservations may next ask the cluster again about the
	// keys it refused (askRefused), all of them in one Acquire: Client clock.
	reaskAt atomic.Int64

	mu struct {
		sync.Mutex
		closed   bool
		closeErr error         // once closed: what calls return (closedError, or ErrClosed)
		changed  chan struct{} // closed and replaced when blocked callers should look again
		// groups are the Budget's leases the keeper watches: every pool
		// lease until it ends, and each reservation's own lease.
		groups map[*leaseGroup]struct{}
		// waiting counts callers blocked in Reserve.
		waiting int
		// slotDenied: an InFlight slot was refused, or the last one
		// granted; until then, and until a slot of this process comes
		// back, Reserve does not ask again.
		slotDenied  int64
		slotDenials int // refusals of a slot in a row
		// probing: one Acquire asks for the slot after refusals, or for
		// rules whose last exchange failed, and the others wait for its
		// answer (claimProbe, probe).
		probing bool
		// slotUnreachable: the last Acquire with the InFlight slot got no
		// answer, or a full cluster's refusal; the slot's policy decides
		// until slotNotBefore (TryReserve's until a probe's answer).
		slotUnreachable bool
		slotFailures    int
		slotNotBefore   int64
		slotFailErr     error // the last failed slot Acquire's error, while slotUnreachable
		// slotErr: the cluster rejected the InFlight rule's key (rejected),
		// and the Budget admits nothing; asked again after a refusal
		// backoff (askRefused) unless slotRetryAt is never.
		slotErr     error
		slotRetryAt int64
		// fallbackSlots counts reservations admitted by an InFlight
		// rule's FallbackShare while the cluster was unreachable.
		fallbackSlots int64
		sig           signals // Block and Lower, coalesced (signal.go)
	}
}

// budgetRule is a Rule with its key and what the Budget needs to use it.
type budgetRule struct {
	Rule
	key  string
	item *pb.Limit // sent inline with every request; read-only
	// lim is a token rule's Limiter (its leases, demand, denials); nil for
	// the InFlight rule.
	lim *Limiter
	// most is the most one reservation may take: more can never be
	// admitted (ErrExceedsLimit).
	most int64
}

// Budget returns the Budget for scope, making it with rules on first use.
// Every call with the same scope returns the same Budget; if rules differ
// from the first call's, the first ones stay and a warning is logged.
//
// Each rule is kept by the cluster under the key scope + "/" + its
// dimension ("openai:org-7:gpt-4.1/input-tokens"); when two rules count the
// same dimension (requests a minute and a day, say), each key also ends in
// "/" + its Per ("…/requests/1m0s"). At most 8 rules (transport.MaxItems),
// at most one InFlight.
//
// Rules the cluster would reject, or that make no sense together, and an
// empty scope make a Budget that admits nothing: Reserve returns the
// *transport.InvalidError naming each problem. After Close, Budget returns
// a closed Budget.
//
// A Budget holds leases and a place in the Client's map until it is closed
// ([Budget.Close]), or until it has been idle for the Client's idle timeout
// ([WithIdleTimeout]); a service with a Budget per tenant should set one.
func (c *Client) Budget(scope string, rules ...Rule) *Budget {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b, ok := c.mu.budgets[scope]; ok {
		if !slices.Equal(b.given, rules) {
			c.log.Warn("leasehold: Budget called again with other rules; keeping the first",
				"scope", scope, "first", b.given, "ignored", rules)
		}
		return b
	}
	b := newBudget(c, scope, rules)
	if c.mu.closed {
		b.mu.closed, b.mu.closeErr = true, ErrClosed
		return b
	}
	c.mu.budgets[scope] = b
	return b
}

func newBudget(c *Client, scope string, rules []Rule) *Budget {
	b := &Budget{c: c, scope: scope, given: slices.Clone(rules), slot: -1}
	b.mu.changed = make(chan struct{})
	b.mu.groups = make(map[*leaseGroup]struct{})
	b.active.Store(c.now())
	for i := range b.mu.sig.lastSent {
		b.mu.sig.lastSent[i] = -int64(signalInterval) // never
	}
	b.records.New = func() any { return &reservation{b: b} }
	b.err = b.build(rules)
	return b
}

// build checks rules, reporting every problem at once, and makes each
// rule's key and Limiter.
func (b *Budget) build(rules []Rule) error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &transport.InvalidError{Field: field, Reason: fmt.Sprintf(format, args...)})
	}
	if b.scope == "" {
		// Its keys ("/tokens") would be shared by every Budget whose scope
		// was left empty, whatever it limits.
		bad("scope", "a budget needs a scope: what its rules limit together (an AI provider's key and model, say)")
	}
	switch {
	case len(rules) == 0:
		bad("rules", "a budget needs at least one rule")
	case len(rules) > transport.MaxItems:
		bad("rules", "%d rules; a budget has at most %d (the items of one Acquire)", len(rules), transport.MaxItems)
	}
	same := make(map[Dimension]int)
	for _, r := range rules {
		same[r.Counts]++
	}
	for i, r := range rules {
		field := fmt.Sprintf("rules[%d]", i)
		key := b.scope + "/" + r.Counts.String()
		if same[r.Counts] > 1 {
			key += "/" + r.Limit.Per.String()
		}
		br := budgetRule{Rule: r, key: key}
		switch r.Counts {
		case Requests, InputTokens, OutputTokens, Tokens, Spend:
			if a := r.Limit.Algorithm; a != 0 && a != TokenBucket {
				bad(field+".limit.algorithm", "a budget rule is a token bucket, not a %v", a)
				break
			}
			if err := r.Limit.check(key); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", field, err))
				break
			}
			if r.MaxDebt < NoDebt {
				bad(field+".max_debt", "max debt %d must be at least %d (NoDebt)", r.MaxDebt, NoDebt)
			}
			br.item = r.Limit.proto()
			switch {
			case r.MaxDebt == 0:
				br.item.MaxDebt = r.Limit.burst()
			case r.MaxDebt > 0:
				br.item.MaxDebt = r.MaxDebt
			}
			br.lim = newLimiter(b.c, key, r.Limit)
			br.lim.owner = b
			br.lim.item = br.item
			br.most = br.lim.capacity
			if br.most == 0 {
				bad(field+".limit", "a strict rule must leave room for leases: its burst %d is all reserve (rate × max lease)", r.Limit.burst())
			}
		case InFlight:
			if b.slot >= 0 {
				bad(field+".counts", "a budget has at most one in-flight rule (rules[%d] is one)", b.slot)
			}
			b.slot = i
			if err := checkKey(key); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", field, err))
			}
			ml := r.Limit.MaxLease
			if ml == 0 {
				ml = defaultSlotLease
			}
			br.item = &pb.Limit{Algorithm: pb.Algorithm_CONCURRENCY, Limit: r.Limit.Rate, MaxLeaseNs: int64(ml)}
			checked := br.item
			if ml < 0 || ml > transport.MaxLeaseTTL {
				// Said here: the cluster's message gives a token bucket's
				// default.
				bad(field+".limit.max_lease", "max lease is %v; it must be in [0, %v] (0 means %v)",
					r.Limit.MaxLease, transport.MaxLeaseTTL, defaultSlotLease)
				checked = &pb.Limit{Algorithm: pb.Algorithm_CONCURRENCY, Limit: r.Limit.Rate}
			}
			if err := transport.ValidateLimit(field+".limit", checked); err != nil {
				errs = append(errs, err)
			}
			if r.MaxDebt != 0 {
				bad(field+".max_debt", "an in-flight rule owes no debt")
			}
			if r.Limit.FailurePolicy != nil {
				if err := validatePolicy(r.Limit.FailurePolicy); err != nil {
					bad(field+".limit.failure_policy", "%v", err)
				}
			}
			br.most = 1
		default:
			bad(field+".counts", "unknown dimension %d", int(r.Counts))
		}
		if r.Price != (Price{}) && r.Counts != Spend {
			bad(field+".price", "a price applies to a spend rule only")
		}
		if r.Counts == Spend && (r.Price.InputPerMillion < 0 || r.Price.OutputPerMillion < 0 || r.Price == (Price{})) {
			bad(field+".price", "a spend rule needs a price, not negative: %+v", r.Price)
		}
		for j := range i {
			if b.rules[j].key == key && r.Counts != InFlight { // a second InFlight rule is said above
				bad(field, "rules[%d] counts the same dimension over the same period", j)
			}
		}
		b.rules = append(b.rules, br)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("leasehold: budget %q: %w", b.scope, err)
	}
	return nil
}

// Scope returns the scope b was made with.
func (b *Budget) Scope() string { return b.scope }

// Rules returns the rules b was made with.
func (b *Budget) Rules() []Rule { return slices.Clone(b.given) }

// Keys returns the cluster key of each rule, in the rules' order.
func (b *Budget) Keys() []string {
	keys := make([]string, len(b.rules))
	for i, r := range b.rules {
		keys[i] = r.key
	}
	return keys
}

// amounts returns what cost takes from each rule.
func (b *Budget) amounts(cost Cost) (a [transport.MaxItems]int64) {
	for i := range b.rules {
		r := &b.rules[i]
		a[i] = amount(r.Counts, r.Price, cost)
	}
	return a
}

// checkCost reports a cost no reservation may have.
func checkCost(c Cost) error {
	if c.Requests < 0 || c.InputTokens < 0 || c.OutputTokens < 0 {
		return fmt.Errorf("leasehold: cost %+v: no field may be negative", c)
	}
	return nil
}

// notifyLocked wakes every caller blocked in Reserve.
func (b *Budget) notifyLocked() {
	close(b.mu.changed)
	b.mu.changed = make(chan struct{})
}

func (b *Budget) notify() {
	b.mu.Lock()
	b.notifyLocked()
	b.mu.Unlock()
}
