//go:build unix

package jepsen

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func scheduleConfig(seed int64) ScheduleConfig {
	kinds, _ := ParseNemeses("kill,pause,partition,clock,clock-out-of-spec")
	return ScheduleConfig{Seed: seed, Duration: 60 * time.Second, Nodes: 3, Clients: 4, Kinds: kinds}
}

// The schedule is a pure function of its config: a seed reproduces a run.
func TestScheduleIsDeterministic(t *testing.T) {
	for seed := range int64(20) {
		a, b := NewSchedule(scheduleConfig(seed)), NewSchedule(scheduleConfig(seed))
		if diff := cmp.Diff(a, b); diff != "" {
			t.Fatalf("seed %d: two schedules differ (-first +second):\n%s", seed, diff)
		}
		if len(a) == 0 {
			t.Fatalf("seed %d: empty schedule for 60s of every kind", seed)
		}
	}
	if cmp.Equal(NewSchedule(scheduleConfig(1)), NewSchedule(scheduleConfig(2))) {
		t.Error("seeds 1 and 2 give the same schedule")
	}
}

// Every fault lies between the warm-up and the quiet period, faults never
// overlap and are spaced for recovery, pauses outlast a lease, targets are
// real processes, and the kinds come in shuffled cycles.
func TestScheduleShape(t *testing.T) {
	for seed := range int64(50) {
		cfg := scheduleConfig(seed).withDefaults()
		faults := NewSchedule(cfg)
		var end time.Duration
		for i, f := range faults {
			if f.At < cfg.Warmup || f.At+f.For > cfg.Duration-cfg.Quiet {
				t.Errorf("seed %d: %v outside [%v, %v]", seed, f, cfg.Warmup, cfg.Duration-cfg.Quiet)
			}
			if i > 0 && f.At < end+4*time.Second {
				t.Errorf("seed %d: %v starts %v after the previous heal, want >= 4s", seed, f, f.At-end)
			}
			end = f.At + f.For
			if !slices.Contains(cfg.Kinds, f.Kind) {
				t.Errorf("seed %d: kind %q not asked for", seed, f.Kind)
			}
			if (strings.HasPrefix(f.Kind, "pause") || f.Kind == PartitionClient || f.Kind == ClockSlowClient) && f.For <= cfg.Lease {
				t.Errorf("seed %d: %v: a client's fault must outlast a lease (%v)", seed, f, cfg.Lease)
			}
			switch f.Kind {
			case ClockDrift:
				if f.RatePPM <= 0 || f.RatePPM >= DesignClockPPM {
					t.Errorf("seed %d: %v: in-spec drift must be within (0, %d) ppm", seed, f, DesignClockPPM)
				}
			case ClockFastLeader, ClockSlowClient:
				if f.RatePPM < 100*DesignClockPPM {
					t.Errorf("seed %d: %v: out-of-spec drift must be far beyond %d ppm", seed, f, DesignClockPPM)
				}
			case ClockJump:
				if d := f.WallOffset.Abs(); d < time.Minute || d > 2*time.Hour {
					t.Errorf("seed %d: %v: wall jump %v outside [1m, 2h]", seed, f, f.WallOffset)
				}
			}
			want := map[string]int{KillNode: 1, KillMinority: 1, KillAll: 3, PauseNode: 1, PauseClient: 1,
				PartitionHalves: 1, PartitionClient: 1, ClockJump: 2, ClockDrift: 1, ClockSlowClient: 1}[f.Kind]
			if len(f.Targets) != want {
				t.Errorf("seed %d: %v: %d targets, want %d", seed, f, len(f.Targets), want)
			}
			for _, tg := range f.Targets {
				if !slices.Contains([]string{"n1", "n2", "n3", "c1", "c2", "c3", "c4"}, tg) {
					t.Errorf("seed %d: %v: unknown target %q", seed, f, tg)
				}
			}
		}
		// The first len(Kinds) faults (as many as fit) are distinct kinds.
		seen := map[string]bool{}
		for _, f := range faults[:min(len(faults), len(cfg.Kinds))] {
			if seen[f.Kind] {
				t.Errorf("seed %d: kind %s repeats before every kind came up", seed, f.Kind)
			}
			seen[f.Kind] = true
		}
	}
}

func TestScheduleEdgeCases(t *testing.T) {
	tests := []struct {
		name string
		cfg  ScheduleConfig
		want int // faults; -1: at least one
	}{
		{"no kinds", ScheduleConfig{Seed: 1, Duration: time.Minute, Nodes: 3, Clients: 2}, 0},
		{"too short", ScheduleConfig{Seed: 1, Duration: 5 * time.Second, Nodes: 3, Kinds: []string{PauseNode}}, 0},
		{"pause-client without clients", ScheduleConfig{Seed: 1, Duration: time.Minute, Nodes: 3, Kinds: []string{PauseClient}}, 0},
		{"minority of one node", ScheduleConfig{Seed: 1, Duration: time.Minute, Nodes: 1, Kinds: []string{KillMinority}}, 0},
		{"kill only, 15s", ScheduleConfig{Seed: 1, Duration: 15 * time.Second, Nodes: 3, Kinds: []string{KillNode, KillAll}}, -1},
		{"a day is bounded", ScheduleConfig{Seed: 1, Duration: 24 * time.Hour, Nodes: 3, Kinds: []string{KillNode}}, maxFaults},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := len(NewSchedule(tt.cfg))
			if (tt.want < 0 && got == 0) || (tt.want >= 0 && got != tt.want) {
				t.Errorf("faults = %d, want %d (-1: some)", got, tt.want)
			}
		})
	}
}

func TestParseNemeses(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr string
	}{
		{"", nil, ""},
		{"none", nil, ""},
		{"kill", []string{KillNode, KillLeader, KillMinority, KillAll}, ""},
		{"pause", []string{PauseNode, PauseLeader, PauseClient}, ""},
		{"pause-client, kill-all,kill-all", []string{KillAll, PauseClient}, ""},
		{"kill,pause", []string{KillNode, KillLeader, KillMinority, KillAll, PauseNode, PauseLeader, PauseClient}, ""},
		{"partition", []string{PartitionLeader, PartitionHalves, PartitionOneWay, PartitionClient}, ""},
		{"clock", []string{ClockJump, ClockDrift}, ""},
		{"clock-out-of-spec,clock-jump", []string{ClockJump, ClockFastLeader, ClockSlowClient}, ""},
		{"explode", nil, "unknown nemesis"},
	}
	for _, tt := range tests {
		got, err := ParseNemeses(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseNemeses(%q) error = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("ParseNemeses(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}
