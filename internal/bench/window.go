package bench

import (
	"context"
	"fmt"
	"io"
	"math/bits"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/internal/bench/redislua"
)

// WindowEnvelope is the bound of a sliding window of Limit L over Window W:
// at most L admitted in any window shorter than W (DESIGN.md invariant 7). It
// is checked here on the calls a run recorded, independently of package
// limiter and fsm, so that the bench checks the cluster rather than agreeing
// with it.
type WindowEnvelope struct {
	Limit  int64         // L, tokens; > 0
	Window time.Duration // W; at least 1µs
}

// Valid reports whether the envelope's fields are in range.
func (e WindowEnvelope) Valid() bool { return e.Limit > 0 && e.Window >= time.Microsecond }

// Allowed returns the most a window may admit over a run of length elapsed
// whose first window was empty: L + L·elapsed/W, rounded down (the
// denominator of the efficiency the chaos harness reports).
func (e WindowEnvelope) Allowed(elapsed time.Duration) int64 {
	if !e.Valid() || elapsed < 0 {
		return 0
	}
	hi, lo := bits.Mul64(uint64(e.Limit), uint64(elapsed))
	if hi >= uint64(e.Window) {
		return 1<<63 - 1
	}
	q, _ := bits.Div64(hi, lo, uint64(e.Window))
	return satAdd(e.Limit, int64(min(q, 1<<62)))
}

// Worst returns, for each key, the most admissions whose whole [Inv, Ret]
// lies inside one window shorter than W: a call counts in a window only if
// it certainly happened inside it, so timing noise can hide an
// over-admission but never invent one. Every window [a, a+W−1µs] with a an
// admission's Inv is examined: any other holds no more. It takes
// O(n log n) time per key, a sort and a sweep with a Fenwick tree over the
// calls' returns.
func (e WindowEnvelope) Worst(calls []Call, keys int) []int64 {
	out := make([]int64, keys)
	span := uint32(min(e.Window.Microseconds()-1, 1<<32-1)) // [a, a+span]: shorter than W
	byKey := make([][]Call, keys)
	for _, c := range calls {
		if c.Admitted() && c.Key() < keys {
			byKey[c.Key()] = append(byKey[c.Key()], c)
		}
	}
	for k, cs := range byKey {
		if len(cs) == 0 {
			continue
		}
		slices.SortFunc(cs, func(a, b Call) int { return int(a.Inv) - int(b.Inv) })
		rets := make([]uint32, len(cs))
		for i, c := range cs {
			rets[i] = c.Ret
		}
		slices.Sort(rets)
		rank := func(r uint32) int { i, _ := slices.BinarySearch(rets, r); return i }
		tree := make([]int, len(rets)+1) // Fenwick tree of the calls in the sweep, by Ret
		add := func(i, d int) {
			for i++; i < len(tree); i += i & -i {
				tree[i] += d
			}
		}
		upTo := func(i int) int { // calls in the sweep with Ret rank < i
			n := 0
			for ; i > 0; i -= i & -i {
				n += tree[i]
			}
			return n
		}
		j := 0
		for _, c := range cs {
			end := uint64(c.Inv) + uint64(span)
			for ; j < len(cs) && uint64(cs[j].Inv) <= end; j++ {
				add(rank(cs[j].Ret), 1)
			}
			// The calls from c on that begin by end; count those that
			// also return by end.
			hi := sort.Search(len(rets), func(i int) bool { return uint64(rets[i]) > end })
			out[k] = max(out[k], int64(upTo(hi)))
			add(rank(c.Ret), -1)
		}
	}
	return out
}

// WindowShares describes how much of the limit each window of a run used:
// admissions (by their Ret) in windows [a, a+W) starting every W/10 from the
// run's start, fully inside it, as a share of L, over all keys. A window
// that admits in bursts shows a low P10 where a steady one does not.
type WindowShares struct {
	Windows           int
	Mean, Median, P10 float64
}

// shares returns the WindowShares of the admitted calls of a run of length
// elapsed over keys keys.
func (e WindowEnvelope) shares(calls []Call, keys int, elapsed time.Duration) WindowShares {
	W := e.Window.Microseconds()
	step := max(W/10, 1)
	end := elapsed.Microseconds()
	var rets []int64
	for _, c := range calls {
		if c.Admitted() {
			rets = append(rets, int64(c.Ret))
		}
	}
	slices.Sort(rets)
	var vals []float64
	for a := int64(0); a+W <= end; a += step {
		i, _ := slices.BinarySearch(rets, a)
		j, _ := slices.BinarySearch(rets, a+W)
		vals = append(vals, float64(j-i)/float64(e.Limit)/float64(keys))
	}
	var s WindowShares
	if len(vals) == 0 {
		return s
	}
	s.Windows = len(vals)
	for _, v := range vals {
		s.Mean += v / float64(len(vals))
	}
	slices.Sort(vals)
	s.Median, s.P10 = vals[len(vals)/2], vals[len(vals)/10]
	return s
}

// checkWindow fills in r's envelope fields for a sliding window.
func (r *Report) checkWindow() {
	e := *r.Window
	allowed := e.Allowed(r.Elapsed)
	for range r.PerKey {
		r.Allowed = satAdd(r.Allowed, allowed)
		r.Ideal = satAdd(r.Ideal, allowed)
	}
	r.NotCounted = "not counted for a sliding window"
	if r.Calls == nil {
		if r.Unrecorded {
			r.Notes = append(r.Notes, fmt.Sprintf("more than %d calls: the window bound was not checked", MaxRecorded))
		}
		return
	}
	for _, worst := range e.Worst(r.Calls, len(r.PerKey)) {
		r.WorstWindow = max(r.WorstWindow, worst)
		r.Over += max(0, worst-e.Limit)
	}
	r.Shares = e.shares(r.Calls, len(r.PerKey), r.Elapsed)
	r.Calls = nil
}

// WindowLimit returns the limit the bench sets on its sliding-window keys:
// rate per window per, counted in slots (0: the default 10), leased for
// maxLease (0: the cluster's default, 2s; at most the window).
func WindowLimit(rate int64, per time.Duration, slots int, maxLease time.Duration) client.Limit {
	return client.Limit{Algorithm: client.SlidingWindow, Rate: rate, Per: per, Slots: slots, MaxLease: maxLease}
}

// RunRedisWindow runs w against the Redis server at addr with the sorted-set
// window (redislua.WindowScript), one connection per goroutine, skew as
// RunRedis.
func RunRedisWindow(ctx context.Context, addr string, skew time.Duration, w Workload, h Hooks) (Report, error) {
	if err := w.Validate(); err != nil {
		return Report{}, err
	}
	name := "redis zset window"
	if skew != 0 {
		name += fmt.Sprintf(" ±%v skew", skew)
	}
	env := WindowEnvelope{Limit: w.Rate, Window: w.Per}
	rep := Report{Name: name, Workload: w, SampleEvery: 1, Window: &env}
	keys := keyNames("bench:zset", w.Keys)
	var deciders []Decider
	var conns []*redislua.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range w.workers() {
		c, err := redislua.Dial(ctx, addr)
		if err != nil {
			return rep, fmt.Errorf("redis %s: %w", addr, err)
		}
		conns = append(conns, c)
		s := skew
		if i/w.PerClient()%2 == 1 {
			s = -skew
		}
		win, err := redislua.NewWindow(c, keys, w.Rate, w.Per, s)
		if err != nil {
			return rep, err
		}
		deciders = append(deciders, win)
	}
	stop := context.AfterFunc(ctx, func() {
		for _, c := range conns {
			_ = c.SetDeadline(time.Now())
		}
	})
	defer stop()
	res, err := run(ctx, name, w.config(1), deciders, h)
	rep.Result = res
	rep.check()
	return rep, err
}

// windowSummary is Summary for a sliding window.
func (r Report) windowSummary() string {
	e := *r.Window
	keys := ""
	if len(r.PerKey) > 1 {
		keys = fmt.Sprintf(", each of %d keys", len(r.PerKey))
	}
	return fmt.Sprintf("%d admitted, most in one window %d, limit L = %d per %v%s; over-admitted %d",
		r.Admitted, r.WorstWindow, e.Limit, e.Window, keys, r.Over)
}

// IsWindow reports whether r ran a sliding window.
func (r Report) IsWindow() bool { return r.Window != nil }

// WriteWindowTable writes one row per sliding-window report: decisions/s,
// admitted, the most admitted in one window against L, tokens over L,
// admissions per window as a share of L (median and 10th percentile), and
// Raft entries per 1000 admitted where they apply; a run that is not valid
// is marked and shows only its bound's figures. It writes nothing if
// reports hold no window.
func WriteWindowTable(w io.Writer, reports []Report) error {
	var rows []Report
	for _, r := range reports {
		if r.IsWindow() {
			rows = append(rows, r)
		}
	}
	if len(rows) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "sliding window\tdecisions/s\tadmitted\tmost in a window\tL\tover-admitted\tper window, median (p10)\traft entries/1000 admitted\t")
	for _, r := range rows {
		entries := "-"
		if r.Leasehold {
			entries = fmt.Sprintf("%.2f", r.RaftEntriesPer1000())
		}
		name, figure := r.tableName(r.Name)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\t\n", name, figure(Count(r.DecisionsPerSecond())), figure(fmt.Sprint(r.Admitted)),
			r.WorstWindow, r.Window.Limit, r.Over, figure(fmt.Sprintf("%.3f (%.3f)", r.Shares.Median, r.Shares.P10)), figure(entries))
	}
	return tw.Flush()
}

// windowLine is the workload line of a sliding-window report.
func (r Report) windowLine(b *strings.Builder) {
	w := r.Workload
	slots := w.Slots
	if slots == 0 {
		slots = 10
	}
	fmt.Fprintf(b, "sliding window %d per %v, %d slots", w.Rate, w.Per, slots)
}
