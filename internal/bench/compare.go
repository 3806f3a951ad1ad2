package bench

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// AboveDemand ends the names of the runs whose key's limit is far above the
// clients' demand: every decision is a server round trip (a Lua call, a Raft
// commit), none a remembered denial.
const AboveDemand = " (limit > demand)"

// WriteTable writes one row per report: decisions/s, p99 Allow latency,
// admitted vs the envelope, and Raft entries per 1000 admitted where it
// applies. If reports holds "redis+lua"+AboveDemand and "leasehold
// central"+AboveDemand, a line comparing them: server decisions per second,
// each a Raft commit. Then, if reports holds "leasehold lease", "leasehold
// central" and the correct-clock "redis+lua" rows, the ratio line, last:
//
//	ratio leasehold/redis decisions/s: X (lease) Y (central)
func WriteTable(w io.Writer, reports []Report) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tdecisions/s\tp99\tadmitted\tallowed\tover-admitted\traft entries/1000 admitted\t")
	var redis, lease, central, redisAll, commits float64
	for _, r := range reports {
		entries := "-"
		if r.Leasehold {
			entries = fmt.Sprintf("%.2f", r.RaftEntriesPer1000())
		}
		fmt.Fprintf(tw, "%s\t%s\t%v\t%d\t%d\t%d\t%s\t\n", r.Name, Count(r.DecisionsPerSecond()),
			r.Latency.Quantile(0.99).Round(roundTo(r.Latency.Quantile(0.99))), r.Admitted, r.Allowed, r.Over, entries)
		switch r.Name {
		case "redis+lua":
			redis = r.DecisionsPerSecond()
		case "leasehold lease":
			lease = r.DecisionsPerSecond()
		case "leasehold central":
			central = r.DecisionsPerSecond()
		case "redis+lua" + AboveDemand:
			redisAll = r.DecisionsPerSecond()
		case "leasehold central" + AboveDemand:
			commits = r.DecisionsPerSecond()
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if redisAll > 0 && commits > 0 {
		if _, err := fmt.Fprintf(w, "every decision a server round trip%s: redis+lua %s/s, leasehold central %s/s (each a Raft commit); ratio %s\n",
			AboveDemand, Count(redisAll), Count(commits), ratio(commits/redisAll)); err != nil {
			return err
		}
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
