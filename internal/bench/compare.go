package bench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// AboveDemand ends the names of the runs whose key's limit is far above the
// clients' demand: every decision is a server round trip (a Lua call, a Raft
// commit), none a remembered denial. AboveDemandAt names such a run with
// more than one goroutine per client.
const AboveDemand = aboveDemandOpen + ")"

// aboveDemandOpen begins every name suffix of a run above demand.
const aboveDemandOpen = " (limit > demand"

// AboveDemandAt returns the name suffix of a run above demand with
// concurrency goroutines per client: AboveDemand for 1.
func AboveDemandAt(concurrency int) string {
	if concurrency <= 1 {
		return AboveDemand
	}
	return fmt.Sprintf("%s, ×%d)", aboveDemandOpen, concurrency)
}

const (
	redisName   = RedisName
	centralName = "leasehold central"
)

// redisPeers are the Redis runs a central run above demand is compared
// with, in the order of the comparison line.
var redisPeers = []string{RedisName, RedisAOFName, RedisReplicatedName}

// WriteTable writes one row per report but the many-keys ones (see
// WriteManyKeysTable): decisions/s, p99 Allow latency,
// admitted vs the envelope, and Raft entries per 1000 admitted where it
// applies. A run that is not valid (Report.NotValid) is marked, shows "-"
// for its figures but the envelope's, and enters no ratio. For each suffix S starting with AboveDemand's " (limit > demand"
// such that reports holds "leasehold central"+S and at least one of
// "redis+lua"+S, RedisAOFName+S and RedisReplicatedName+S, a line comparing
// central mode's server decisions per second, each committed in Raft, with
// each of them:
//
//	every decision a server round trip S: leasehold central X/s (each committed in Raft); ratio to redis+lua Y/s R, to ...
//
// Then the TLS cost line, if reports hold runs with and without TLS
// (writeTLSCost). Then, if reports holds "leasehold lease", "leasehold
// central" and the correct-clock "redis+lua" rows, the ratio line, last:
//
//	ratio leasehold/redis decisions/s: X (lease) Y (central)
func WriteTable(w io.Writer, reports []Report) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tdecisions/s\tp99\tadmitted\tallowed\tover-admitted\traft entries/1000 admitted\t")
	var redis, lease, central float64
	// Runs above demand, by name suffix, in the order they appear: central
	// mode's decisions/s and each Redis peer's.
	type runs struct {
		central float64
		redis   map[string]float64
	}
	var suffixes []string
	above := map[string]*runs{}
	for _, r := range reports {
		if strings.HasPrefix(r.Name, ManyKeysPrefix) || r.IsWindow() {
			continue // in WriteManyKeysTable's or WriteWindowTable's table
		}
		entries := "-"
		if r.Leasehold {
			entries = fmt.Sprintf("%.2f", r.RaftEntriesPer1000())
		}
		name, figure := r.tableName(r.Name)
		p99 := r.Latency.Quantile(0.99)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t\n", name, figure(Count(r.DecisionsPerSecond())),
			figure(p99.Round(roundTo(p99)).String()), figure(fmt.Sprint(r.Admitted)), r.Allowed, r.Over, figure(entries))
		if r.NotValid() != "" {
			continue // in no ratio
		}
		switch r.Name {
		case redisName:
			redis = r.DecisionsPerSecond()
		case "leasehold lease":
			lease = r.DecisionsPerSecond()
		case centralName:
			central = r.DecisionsPerSecond()
		}
		for _, system := range append([]string{centralName}, redisPeers...) {
			suffix, ok := strings.CutPrefix(r.Name, system)
			if !ok || !strings.HasPrefix(suffix, aboveDemandOpen) {
				continue
			}
			if above[suffix] == nil {
				above[suffix] = &runs{redis: map[string]float64{}}
				suffixes = append(suffixes, suffix)
			}
			if system == centralName {
				above[suffix].central = r.DecisionsPerSecond()
			} else {
				above[suffix].redis[system] = r.DecisionsPerSecond()
			}
			break
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, s := range suffixes {
		a := above[s]
		var peers []string
		for _, p := range redisPeers {
			if d := a.redis[p]; d > 0 {
				peers = append(peers, fmt.Sprintf("to %s %s/s %s", p, Count(d), ratio(a.central/d)))
			}
		}
		if a.central <= 0 || len(peers) == 0 {
			continue
		}
		if _, err := fmt.Fprintf(w, "every decision a server round trip%s: leasehold central %s/s (each committed in Raft); ratio %s\n",
			s, Count(a.central), strings.Join(peers, ", ")); err != nil {
			return err
		}
	}
	if err := writeTLSCost(w, reports); err != nil {
		return err
	}
	if redis > 0 && lease > 0 && central > 0 {
		_, err := fmt.Fprintf(w, "ratio leasehold/redis decisions/s: %s (lease) %s (central)\n", ratio(lease/redis), ratio(central/redis))
		return err
	}
	return nil
}

// ratio formats a ratio with three significant digits, without exponents.
func ratio(x float64) string {
	switch {
	case x >= 100:
		return fmt.Sprintf("%.0f", x)
	case x >= 10:
		return fmt.Sprintf("%.1f", x)
	}
	return fmt.Sprintf("%.2f", x)
}

// roundTo returns a rounding unit that keeps about three significant digits
// of d.
func roundTo(d time.Duration) time.Duration {
	u := time.Duration(1)
	for d >= 1000*u {
		u *= 10
	}
	return u
}

// A ManyKeysCase is one many-keys comparison of `bench compare`: per-tenant
// limits, thousands of keys each seen now and then by every client (issue
// 17), run against Redis + Lua and against Leasehold's SDK in lease mode,
// where the SDK chooses per key between leases and central decisions.
type ManyKeysCase struct {
	Name string
	Workload
}

// ManyKeysCases returns the many-keys cases of `bench compare` for
// clients simulated processes and runs of duration: 1000 and 20000 keys, one
// goroutine per client and concurrency, each
//
//   - saturated: modest limits (8/s, burst 8) in a closed loop, where the
//     limit decides; with one goroutine per client a key is asked about
//     1/s, with concurrency far more than its limit;
//   - not saturated: the limit far above what the clients ask, so that every
//     decision is an admission and what is measured is its cost;
//
// and, on 1000 keys, both concurrencies paced at half of every key's limit
// (Demand 0.5), where every request must be admitted: the spurious-denial
// check of issue 17. concurrency ≤ 1 leaves out the wide runs.
func ManyKeysCases(clients, concurrency int, duration time.Duration) []ManyKeysCase {
	var out []ManyKeysCase
	widths := []int{1}
	if concurrency > 1 {
		widths = append(widths, concurrency)
	}
	modest := func(keys, g int) Workload {
		return Workload{Clients: clients, Concurrency: g, Keys: keys, Duration: duration, Rate: 8, Per: time.Second, Burst: 8}
	}
	for _, g := range widths {
		w := modest(1000, g)
		w.Demand = 0.5
		out = append(out, ManyKeysCase{Name: fmt.Sprintf("1000 keys 8/s, ×%d, demand 0.5", g), Workload: w})
	}
	for _, keys := range []int{1000, 20000} {
		for _, g := range widths {
			out = append(out, ManyKeysCase{Name: fmt.Sprintf("%d keys 8/s, ×%d, closed loop", keys, g), Workload: modest(keys, g)})
			above := modest(keys, g)
			above.Rate, above.Burst = 1_000_000_000, 1_000_000_000
			out = append(out, ManyKeysCase{Name: fmt.Sprintf("%d keys, limit > demand, ×%d", keys, g), Workload: above})
		}
	}
	return out
}

// ManyKeysPrefix begins the names of the many-keys reports: "many: <case>:
// redis+lua" and "many: <case>: leasehold".
const ManyKeysPrefix = "many: "

// ManyKeysName returns the report name of system ("redis+lua" or
// "leasehold") in case c.
func ManyKeysName(c ManyKeysCase, system string) string {
	return ManyKeysPrefix + c.Name + ": " + system
}

// WriteManyKeysTable writes the many-keys reports (named by ManyKeysName),
// a row per case and system: decisions/s, p50 Allow latency, admitted, the
// share of B + r·Δ admitted, spurious denials, and for Leasehold the
// requests and Raft entries per 1000 admitted and its decisions/s over
// Redis's; a run that is not valid is marked and shows no figure. It
// writes nothing if there are none.
func WriteManyKeysTable(w io.Writer, reports []Report) error {
	redis := map[string]float64{}
	var rows []Report
	for _, r := range reports {
		rest, ok := strings.CutPrefix(r.Name, ManyKeysPrefix)
		if !ok {
			continue
		}
		rows = append(rows, r)
		if c, ok := strings.CutSuffix(rest, ": "+redisName); ok && r.NotValid() == "" {
			redis[c] = r.DecisionsPerSecond()
		}
	}
	if len(rows) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "many keys\tdecisions/s\tp50\tadmitted\tof B + r·Δ\tspurious denials\trequests/1000 admitted\traft entries/1000 admitted\tvs redis+lua\t")
	for _, r := range rows {
		name, figure := r.tableName(strings.TrimPrefix(r.Name, ManyKeysPrefix))
		spurious := "-"
		if r.Counted {
			spurious = fmt.Sprint(r.Spurious)
		}
		requests, entries, vs := "-", "-", "-"
		if r.Leasehold {
			requests = fmt.Sprintf("%.0f", r.RPCsPer1000())
			entries = fmt.Sprintf("%.0f", r.RaftEntriesPer1000())
			c, _ := strings.CutSuffix(strings.TrimPrefix(r.Name, ManyKeysPrefix), ": leasehold")
			if d := redis[c]; d > 0 {
				vs = ratio(r.DecisionsPerSecond() / d)
			}
		}
		p50 := r.Latency.Quantile(0.5)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", name, figure(Count(r.DecisionsPerSecond())),
			figure(p50.Round(roundTo(p50)).String()), figure(fmt.Sprint(r.Admitted)), figure(fmt.Sprintf("%.3f", r.Efficiency())),
			figure(spurious), figure(requests), figure(entries), figure(vs))
	}
	return tw.Flush()
}
