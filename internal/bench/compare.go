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
	redisName   = "redis+lua"
	centralName = "leasehold central"
)

// WriteTable writes one row per report: decisions/s, p99 Allow latency,
// admitted vs the envelope, and Raft entries per 1000 admitted where it
// applies. For each suffix S starting with AboveDemand's " (limit > demand"
// such that reports holds both "redis+lua"+S and "leasehold central"+S, a
// line comparing them: server decisions per second, each committed in Raft.
// Then the TLS cost line, if reports hold runs with and without TLS
// (writeTLSCost). Then, if reports holds "leasehold lease", "leasehold
// central" and the correct-clock "redis+lua" rows, the ratio line, last:
//
//	ratio leasehold/redis decisions/s: X (lease) Y (central)
func WriteTable(w io.Writer, reports []Report) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tdecisions/s\tp99\tadmitted\tallowed\tover-admitted\traft entries/1000 admitted\t")
	var redis, lease, central float64
	// Runs above demand, by name suffix, in the order they appear.
	type pair struct{ redis, central float64 }
	var suffixes []string
	above := map[string]*pair{}
	aboveRun := func(name, prefix string) *pair {
		suffix, ok := strings.CutPrefix(name, prefix)
		if !ok || !strings.HasPrefix(suffix, aboveDemandOpen) {
			return nil
		}
		if above[suffix] == nil {
			above[suffix] = &pair{}
			suffixes = append(suffixes, suffix)
		}
		return above[suffix]
	}
	for _, r := range reports {
		entries := "-"
		if r.Leasehold {
			entries = fmt.Sprintf("%.2f", r.RaftEntriesPer1000())
		}
		fmt.Fprintf(tw, "%s\t%s\t%v\t%d\t%d\t%d\t%s\t\n", r.Name, Count(r.DecisionsPerSecond()),
			r.Latency.Quantile(0.99).Round(roundTo(r.Latency.Quantile(0.99))), r.Admitted, r.Allowed, r.Over, entries)
		switch r.Name {
		case redisName:
			redis = r.DecisionsPerSecond()
		case "leasehold lease":
			lease = r.DecisionsPerSecond()
		case centralName:
			central = r.DecisionsPerSecond()
		}
		if p := aboveRun(r.Name, redisName); p != nil {
			p.redis = r.DecisionsPerSecond()
		} else if p := aboveRun(r.Name, centralName); p != nil {
			p.central = r.DecisionsPerSecond()
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, s := range suffixes {
		if p := above[s]; p.redis > 0 && p.central > 0 {
			if _, err := fmt.Fprintf(w, "every decision a server round trip%s: redis+lua %s/s, leasehold central %s/s (each committed in Raft); ratio %s\n",
				s, Count(p.redis), Count(p.central), ratio(p.central/p.redis)); err != nil {
				return err
			}
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
