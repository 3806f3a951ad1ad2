package bench

import (
	"fmt"
	"io"
	"strings"
)

// NoTLS ends the name of a Leasehold run against a cluster serving plain
// text, made beside the same run over mutual TLS to measure what TLS costs.
const NoTLS = " (no TLS)"

// TLSCostGoal is the least ratio of decisions/s with TLS to without that
// lease mode should keep (issue 13).
const TLSCostGoal = 0.9

// writeTLSCost writes, for each of lease and central mode whose reports
// include the run over TLS ("leasehold lease") and the run without
// ("leasehold lease"+NoTLS), one line with the ratio of their decisions/s:
//
//	TLS on/off decisions/s: 0.98 (lease, 47.9M/48.8M) 1.01 (central, 1.25M/1.24M); goal ≥ 0.9 in lease mode
//
// and nothing if there is no such valid pair (Report.NotValid).
func writeTLSCost(w io.Writer, reports []Report) error {
	rate := map[string]float64{}
	for _, r := range reports {
		if r.NotValid() == "" {
			rate[r.Name] = r.DecisionsPerSecond()
		}
	}
	var parts []string
	for _, mode := range []Mode{ModeLease, ModeCentral} {
		name := "leasehold " + mode.String()
		on, off := rate[name], rate[name+NoTLS]
		if on > 0 && off > 0 {
			parts = append(parts, fmt.Sprintf("%s (%s, %s/%s)", ratio(on/off), mode, Count(on), Count(off)))
		}
	}
	if len(parts) == 0 {
		return nil
	}
	_, err := fmt.Fprintf(w, "TLS on/off decisions/s: %s; goal ≥ %.1f in lease mode\n", strings.Join(parts, " "), TLSCostGoal)
	return err
}
