//go:build unix

package jepsen

import (
	"context"
	"math"
	"strings"
	"time"
)

// Availability bounds a run asserts: generous, so that a slow, loaded
// machine does not fail a correct system, yet a cluster that never recovers
// or a client that never fails over does fail.
const (
	runMaxFailover   = 15 * time.Second
	runMaxRecovery   = 15 * time.Second
	runMinEfficiency = 0.2
)

// checkSummary is one checker's line in results.json and the run's log.
type checkSummary struct {
	Name    string `json:"name"`
	Valid   bool   `json:"valid"`
	Summary string `json:"summary"`
}

// checkOutcome is what the checkers made of a run's history.
type checkOutcome struct {
	// Available is false when no checker could run: the verdict is then
	// "unknown", never "valid".
	Available bool
	Valid     bool
	Summaries []checkSummary
	// Results are the checkers' own results, for results.json.
	Results any
	// Headline metrics for the verdict line; NaN or negative: unknown.
	OverAdmitted float64
	Efficiency   float64
	FailoverP50  time.Duration
	// GroupEfficiency is each key group's efficiency, by group name.
	GroupEfficiency map[string]float64
}

// checkHistory runs the checkers (CheckAll) over a run's merged history of
// a cluster of nodes. This file is the only place the runner touches the
// checkers' API.
func checkHistory(_ context.Context, events []Event, keys []KeySpec, nodes []string) checkOutcome {
	out := checkOutcome{Available: true, OverAdmitted: math.NaN(), Efficiency: math.NaN(), FailoverP50: -1}
	results := CheckAll(events, keys, Options{
		Nodes: nodes,
		// The guarantee is stated for clocks within the design's rate
		// error; the in-spec clock-drift fault uses most of it.
		ClockRatePPM:  DesignClockPPM,
		MaxFailover:   runMaxFailover,
		MaxRecovery:   runMaxRecovery,
		MinEfficiency: runMinEfficiency,
	})
	out.Results = results
	out.Valid = Valid(results)
	for _, r := range results {
		out.Summaries = append(out.Summaries, checkSummary{Name: r.Name, Valid: r.Valid, Summary: r.Summary})
		switch r.Name {
		case "admissions":
			out.OverAdmitted = r.Metrics["over_admitted"] // absent: nothing over the bound
		case "availability":
			if v, ok := r.Metrics["efficiency"]; ok {
				out.Efficiency = v
			}
			for m, v := range r.Metrics {
				if g, ok := strings.CutPrefix(m, "efficiency:group:"); ok {
					if out.GroupEfficiency == nil {
						out.GroupEfficiency = map[string]float64{}
					}
					out.GroupEfficiency[g] = v
				}
			}
			if v, ok := r.Metrics["failover_p50_ms"]; ok {
				out.FailoverP50 = time.Duration(v * float64(time.Millisecond))
			}
		}
	}
	return out
}
