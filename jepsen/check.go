//go:build unix

package jepsen

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Result is one checker's verdict on a history.
type Result struct {
	// Name identifies the checker: "history", "admissions", "grants",
	// "lease-expiry", "lease-budget", "idempotency", "durability",
	// "log-time", "availability" or "budget".
	Name string `json:"name"`
	// Valid is false when the checker found a violation.
	Valid bool `json:"valid"`
	// Summary is one line for a person.
	Summary string `json:"summary"`
	// Violations describes the first maxViolations violations found, each
	// with the times (from the history's first event) and values needed to
	// find it in the history. Metrics["violations"] counts them all.
	Violations []string `json:"violations,omitempty"`
	// Metrics are the checker's measurements, by name (see each checker).
	Metrics map[string]float64 `json:"metrics,omitempty"`
	// Details are informational lines, e.g. one per failover.
	Details []string `json:"details,omitempty"`
}

// maxViolations is how many violations a Result describes.
const maxViolations = 20

// ppmScale is one in parts per million.
const ppmScale = 1_000_000

// Options tune the checkers. The zero value checks a run on one host with
// no clock-rate faults and asserts no availability bounds.
type Options struct {
	// ClockRatePPM is the clock-rate error, in parts per million, that the
	// run lets the nodes' clocks have against the reference clock (a drift
	// within the design bound, which must pass). It widens every refill term
	// r·Δ to r·Δ·(1+ρ), shortens the sliding windows checked to W/(1+ρ), and
	// lets log time run that much faster than the reference clock.
	// Range [0, 1e6); 0 means exact clocks.
	ClockRatePPM int64
	// ExcludeFallback leaves admissions made by a client's failure policy
	// (Value "fallback") out of the admission envelope. A fallback policy
	// admits without the cluster by design, so a run that uses one beyond
	// fail-closed sets this; they are counted in Metrics either way.
	ExcludeFallback bool
	// Nodes names the cluster's nodes, for finding full-cluster outages.
	// Empty: every nemesis target and process named n<digits>.
	Nodes []string
	// MaxFailover fails the availability check when a leader fault's
	// failover gap (or one that never ended) exceeds it. 0: no bound.
	MaxFailover time.Duration
	// MaxRecovery fails the availability check when the first grant after
	// the last heal comes later than this. 0: no bound.
	MaxRecovery time.Duration
	// MinEfficiency fails the availability check when the overall
	// efficiency is below it. 0: no bound.
	MinEfficiency float64
}

func (o Options) validate() error {
	var errs []error
	if o.ClockRatePPM < 0 || o.ClockRatePPM >= ppmScale {
		errs = append(errs, fmt.Errorf("clock rate error %d ppm must be in [0, %d)", o.ClockRatePPM, ppmScale))
	}
	if o.MaxFailover < 0 || o.MaxRecovery < 0 {
		errs = append(errs, errors.New("failover and recovery bounds must not be negative"))
	}
	if math.IsNaN(o.MinEfficiency) || o.MinEfficiency < 0 {
		errs = append(errs, fmt.Errorf("minimum efficiency %v must be a non-negative number", o.MinEfficiency))
	}
	return errors.Join(errs...)
}

// CheckAll runs every checker over events and returns their results in a
// fixed order: history, admissions, grants, lease-expiry, lease-budget,
// idempotency, durability, log-time, availability, budget. It pairs the history
// once; the results are those of the CheckX functions.
func CheckAll(events []Event, keys []KeySpec, opts Options) []Result {
	an := analyze(events, keys, opts)
	return []Result{
		an.history(),
		an.admissionEnvelope(),
		an.grantEnvelope(),
		an.leaseExpiry(),
		an.leaseBudget(),
		an.idempotency(),
		an.durability(),
		an.logTime(),
		an.availability(),
		an.budget(),
	}
}

// Valid reports whether every result is valid.
func Valid(results []Result) bool {
	for _, r := range results {
		if !r.Valid {
			return false
		}
	}
	return true
}

// CheckHistory checks that the history is well formed, so that no other
// checker passes because it was fed garbage: every completion pairs with an
// earlier invoke of the same (Process, ID) and Op, allows and grants name a
// key in keys, counts are not negative, and keys and options are valid.
// Metrics: events, ops, incomplete (ops that never completed), info.
func CheckHistory(events []Event, keys []KeySpec, opts Options) Result {
	return analyze(events, keys, opts).history()
}

// analysis is a history prepared for the checkers: paired, split by
// operation, keys normalized. Building it is the only pass over the raw
// events; the checkers read it and never change it.
type analysis struct {
	opts    Options
	setup   []string           // problems with keys or options
	keys    map[string]KeySpec // normalized, valid keys
	keyList []KeySpec          // valid keys, in the order given
	events  int
	ops     []Op
	orphans []Event
	origin  int64 // the earliest event time; reports count from it

	allows   []*Op
	grants   []*Op
	releases []*Op
	nemesis  []*Op

	grantRecs []*grantRec            // ok grants, one per distinct answer
	leases    map[uint64][]*grantRec // lease id -> its ok grants
	// logSeen: the cluster's answers that carry a log time, by log time,
	// with the earliest completion at or after each (check_pieces.go).
	logSeen []logSeen

	// By key, for checkers that go key by key (a workload may have
	// hundreds of keys): allows, and grantRecs.
	allowsByKey    map[string][]*Op
	grantRecsByKey map[string][]*grantRec
	// centralGrants: for a process none of whose lease requests on a key
	// was answered centrally (ttl 0), its ok central grants of the key,
	// by invoke time (centralAdmittedFrom).
	centralGrants map[processKey][]wspan
}

// processKey names one process's use of one key.
type processKey struct{ process, key string }

// grantRec is one applied grant: ok grant operations that carry the same
// answer to the same request (ClientID, Seq) merged into one, since the
// cluster applied that request once.
type grantRec struct {
	key, client, process string
	seq                  uint64
	lease                uint64
	n, ttl, logTime      int64
	// pieces and pieceNs: a sliding window's lease in pieces (Event.Pieces).
	pieces  int64
	pieceNs int64
	// s and e bound the time the grant applied: no earlier than the first
	// invoke (the request's first send) and no later than the first reply.
	s, e int64
	ops  []*Op
}

func analyze(events []Event, keys []KeySpec, opts Options) *analysis {
	an := &analysis{opts: opts, keys: make(map[string]KeySpec), events: len(events), leases: make(map[uint64][]*grantRec)}
	if err := opts.validate(); err != nil {
		an.setup = append(an.setup, "options: "+err.Error())
	}
	for _, k := range keys {
		if err := k.Validate(); err != nil {
			an.setup = append(an.setup, err.Error())
			continue
		}
		if _, dup := an.keys[k.Key]; dup {
			an.setup = append(an.setup, fmt.Sprintf("key %q is named twice", k.Key))
			continue
		}
		k = k.Normalize()
		an.keys[k.Key] = k
		an.keyList = append(an.keyList, k)
	}
	an.ops, an.orphans = pairOps(events)
	an.origin = maxTime
	for _, e := range events {
		an.origin = min(an.origin, e.Time)
	}
	if len(events) == 0 {
		an.origin = 0
	}
	for i := range an.ops {
		o := &an.ops[i]
		switch {
		case o.Process == ProcessNemesis:
			an.nemesis = append(an.nemesis, o)
		case o.Op == OpAllow:
			an.allows = append(an.allows, o)
		case o.Op == OpGrant:
			an.grants = append(an.grants, o)
		case o.Op == OpRelease:
			an.releases = append(an.releases, o)
		}
	}
	an.mergeGrants()
	an.buildLogSeen()
	an.allowsByKey = make(map[string][]*Op)
	for _, o := range an.allows {
		an.allowsByKey[o.Invoke.Key] = append(an.allowsByKey[o.Invoke.Key], o)
	}
	an.grantRecsByKey = make(map[string][]*grantRec)
	for _, g := range an.grantRecs {
		an.grantRecsByKey[g.key] = append(an.grantRecsByKey[g.key], g)
	}
	an.buildCentralGrants()
	return an
}

// buildCentralGrants fills centralGrants.
func (an *analysis) buildCentralGrants() {
	an.centralGrants = make(map[processKey][]wspan)
	leased := make(map[processKey]bool)
	for _, o := range an.grants {
		pk := processKey{o.Process, o.Invoke.Key}
		if o.Invoke.Value != ValueCentral {
			// A lease request answered without a lease (ttl 0) hands its
			// grant to the calls blocked when it is answered, which may
			// have begun after it was sent. One answered with a lease
			// serves only calls that say so (Complete.Lease), which are
			// never narrowed: the SDK's probes of an unreachable cluster
			// are such requests, and excluding every process that sent
			// one left the check blind after a run's first outage.
			if o.OK() && o.Complete.Lease == 0 {
				leased[pk] = true
			}
			continue
		}
		if o.OK() {
			an.centralGrants[pk] = append(an.centralGrants[pk], wspan{s: o.Invoke.Time, e: o.Complete.Time, n: o.Complete.N})
		}
	}
	for pk, gs := range an.centralGrants {
		if leased[pk] {
			delete(an.centralGrants, pk)
			continue
		}
		slices.SortFunc(gs, func(a, b wspan) int { return cmp.Compare(a.s, b.s) })
	}
}

// centralAdmittedFrom returns the earliest time an ok allow o may have
// been admitted: its invoke, or, for a call its process decided centrally,
// the earliest reply of a central grant to that process on that key that
// was sent after the call began and answered before it returned. A call
// decided centrally is carried by an Acquire sent after it was queued and
// admitted only once that Acquire's answer is read (the SDK keeps no
// central grant for later calls), and the history records both in that
// order on one clock; so the call's whole interval, as the envelope counts
// it, can begin there. Without this, a call whose central answer came late
// (seconds, across a retry) spans more than a window and is never counted,
// and the SDK spending such an answer next to the next window's grants
// (2L in a real window) would pass. Not for a process any of whose lease
// requests on the key was answered centrally (ttl 0): that grant goes
// to calls that may have begun after it was sent.
func (an *analysis) centralAdmittedFrom(o *Op) int64 {
	a0, a1 := o.Invoke.Time, o.Complete.Time
	if o.Complete.Lease != 0 || o.Complete.Value != "" || o.Invoke.Value != "" {
		return a0 // a lease's, the failure policy's, or untraced
	}
	gs := an.centralGrants[processKey{o.Process, o.Invoke.Key}]
	i, _ := slices.BinarySearchFunc(gs, a0, func(g wspan, t int64) int { return cmp.Compare(g.s, t) })
	from := int64(math.MaxInt64)
	for ; i < len(gs) && gs[i].s <= a1; i++ {
		if gs[i].e <= a1 {
			from = min(from, gs[i].e)
		}
	}
	if from == math.MaxInt64 {
		return a0
	}
	return max(a0, from)
}

// mergeGrants builds grantRecs and leases from the ok grants.
func (an *analysis) mergeGrants() {
	type answer struct {
		client string
		seq    uint64
		lease  uint64
		n      int64
	}
	newRec := func(o *Op) *grantRec {
		c := o.Complete
		return &grantRec{
			key: o.Invoke.Key, client: o.Invoke.ClientID, process: o.Process, seq: o.Invoke.Seq,
			lease: c.Lease, n: c.N, ttl: c.TTL, logTime: c.LogTime, s: o.Invoke.Time, e: c.Time,
			pieces: int64(c.Pieces), pieceNs: c.PieceNs,
		}
	}
	byAnswer := make(map[answer]*grantRec)
	for _, o := range an.grants {
		if !o.OK() {
			continue
		}
		var rec *grantRec
		if o.Invoke.ClientID != "" {
			k := answer{o.Invoke.ClientID, o.Invoke.Seq, o.Complete.Lease, o.Complete.N}
			if rec = byAnswer[k]; rec == nil {
				rec = newRec(o)
				byAnswer[k] = rec
				an.grantRecs = append(an.grantRecs, rec)
			}
		} else {
			rec = newRec(o)
			an.grantRecs = append(an.grantRecs, rec)
		}
		rec.s = min(rec.s, o.Invoke.Time)
		rec.e = min(rec.e, o.Complete.Time)
		rec.ops = append(rec.ops, o)
	}
	for _, rec := range an.grantRecs {
		if rec.lease != 0 {
			an.leases[rec.lease] = append(an.leases[rec.lease], rec)
		}
	}
}

// at formats a reference-clock time as the offset from the history's first
// event.
func (an *analysis) at(t int64) string {
	if t == maxTime {
		return "never"
	}
	return "+" + time.Duration(t-an.origin).String()
}

// allowTokens returns the tokens an allow asked for: N, or 1 when N is not
// positive (Allow).
func allowTokens(o *Op) int64 {
	if o.Invoke.N > 0 {
		return o.Invoke.N
	}
	return 1
}

// isFallback reports whether an ok allow was admitted by the failure policy.
func isFallback(o *Op) bool {
	return o.Complete.Value == ValueFallback || o.Invoke.Value == ValueFallback
}

// resultBuilder accumulates a Result.
type resultBuilder struct {
	r     Result
	count int
}

func newResultBuilder(name string) *resultBuilder {
	return &resultBuilder{r: Result{Name: name, Valid: true, Metrics: make(map[string]float64)}}
}

// violate records a violation.
func (b *resultBuilder) violate(format string, args ...any) {
	b.count++
	b.r.Valid = false
	if len(b.r.Violations) < maxViolations {
		b.r.Violations = append(b.r.Violations, fmt.Sprintf(format, args...))
	}
}

// setup records the analysis's setup problems as violations: a checker
// never passes a run whose keys or options it could not read.
func (b *resultBuilder) setup(an *analysis) {
	for _, s := range an.setup {
		b.violate("%s", s)
	}
}

// done returns the Result with summary as its summary when valid.
func (b *resultBuilder) done(summary string) Result {
	b.r.Metrics["violations"] = float64(b.count)
	if b.r.Valid {
		b.r.Summary = summary
	} else {
		b.r.Summary = fmt.Sprintf("%d violation(s); first: %s", b.count, b.r.Violations[0])
	}
	return b.r
}

func (an *analysis) history() Result {
	b := newResultBuilder("history")
	b.setup(an)
	for _, e := range an.orphans {
		b.violate("%s %s %s id=%d at %s has no open invoke", e.Process, e.Op, e.Type, e.ID, an.at(e.Time))
	}
	incomplete, info := 0, 0
	for i := range an.ops {
		o := &an.ops[i]
		if !o.Done {
			incomplete++
		} else if o.Complete.Type == Info {
			info++
		}
		if o.Done && o.Complete.Op != o.Invoke.Op {
			b.violate("%s id=%d: invoke %q completed as %q", o.Process, o.Invoke.ID, o.Invoke.Op, o.Complete.Op)
		}
		switch o.Op {
		case OpAllow, OpGrant:
			if _, ok := an.keys[o.Invoke.Key]; !ok && len(an.setup) == 0 {
				b.violate("%s %s id=%d at %s names key %q, which keys.json lacks", o.Process, o.Op, o.Invoke.ID, an.at(o.Invoke.Time), o.Invoke.Key)
			}
		}
		if o.Invoke.N < 0 || o.Complete.N < 0 || o.Complete.TTL < 0 {
			b.violate("%s %s id=%d at %s has a negative count or ttl", o.Process, o.Op, o.Invoke.ID, an.at(o.Invoke.Time))
		}
	}
	b.r.Metrics["events"] = float64(an.events)
	b.r.Metrics["ops"] = float64(len(an.ops))
	b.r.Metrics["incomplete"] = float64(incomplete)
	b.r.Metrics["info"] = float64(info)
	return b.done(fmt.Sprintf("%d events, %d ops (%d incomplete, %d info), %d keys", an.events, len(an.ops), incomplete, info, len(an.keyList)))
}

// parseTargets returns the node or client names in a nemesis Value: names
// separated by commas, bars or spaces, each maybe marked "leader:"; the text
// after a ": " (an error an info completion appends) is ignored.
func parseTargets(v string) (names []string, leader bool) {
	if i := strings.Index(v, ": "); i >= 0 {
		v = v[:i]
	}
	for _, f := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == '|' || r == ' ' }) {
		if name, ok := strings.CutPrefix(f, LeaderPrefix); ok {
			leader = true
			f = name
		}
		if f != "" && !slices.Contains(names, f) {
			names = append(names, f)
		}
	}
	return names, leader
}

// isNodeName reports whether s looks like a node's process name, n<digits>.
func isNodeName(s string) bool {
	if len(s) < 2 || s[0] != 'n' {
		return false
	}
	for _, r := range s[1:] {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}
