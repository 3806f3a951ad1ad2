//go:build unix

package jepsen

import (
	"slices"
	"testing"
	"time"
)

// A stall must hold the answers longer than the sw-central key's window,
// so that a central answer it delays is spent after the window that
// counted it, and shorter than the SDK's request timeout (2s), so that the
// answer is spent rather than abandoned; it needs clients, and aims at the
// leader.
func TestScheduleStallAnswers(t *testing.T) {
	var window time.Duration
	for _, k := range DefaultWorkload(4).Keys {
		if k.Key == "sw-central" {
			window = k.Per
		}
	}
	if window == 0 {
		t.Fatal("the default workload has no sw-central key")
	}
	const requestTimeout = 2 * time.Second // client's default, WithRequestTimeout
	stalls := 0
	for seed := range int64(20) {
		for _, f := range NewSchedule(ScheduleConfig{Seed: seed, Duration: 60 * time.Second, Nodes: 3, Clients: 4, Kinds: []string{StallAnswers}}) {
			stalls++
			if f.For <= window || f.For >= requestTimeout {
				t.Errorf("seed %d: %v: want a hold in (%v, %v)", seed, f, window, requestTimeout)
			}
			if len(f.Targets) != 0 {
				t.Errorf("seed %d: %v: targets %v, want none (the leader and every client, resolved at the fault)", seed, f, f.Targets)
			}
		}
	}
	if stalls == 0 {
		t.Fatal("no stall scheduled")
	}
	if !slices.Contains(leaderKinds, StallAnswers) {
		t.Error("stall-answers is not aimed at the leader")
	}
	if got := NewSchedule(ScheduleConfig{Seed: 1, Duration: 60 * time.Second, Nodes: 3, Kinds: []string{StallAnswers}}); len(got) != 0 {
		t.Errorf("without clients: %v, want no stall", got)
	}
	kinds, err := ParseNemeses("stall")
	if err != nil || !slices.Equal(kinds, []string{StallAnswers}) {
		t.Errorf(`ParseNemeses("stall") = %v, %v`, kinds, err)
	}
}
