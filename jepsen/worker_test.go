package jepsen

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestWorkerArgsRoundTrip(t *testing.T) {
	want := WorkerConfig{Name: "c3", Endpoints: []string{"127.0.0.1:1", "127.0.0.1:2"}, Workload: "/r/workload.json",
		History: "/r/history-c3.jsonl", Seed: 7003, Duration: 90 * time.Second}
	got, err := ParseWorkerArgs(want.Args())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	if _, err := ParseWorkerArgs([]string{"--duration", "0s"}); err == nil {
		t.Error("no endpoints, no history, zero duration: no error")
	}
}

// The default workload is valid, asks several times each limit, survives
// workload.json, and its keys are valid for the checkers.
func TestDefaultWorkload(t *testing.T) {
	for _, clients := range []int{1, 4, 32} {
		w := DefaultWorkload(clients)
		path := filepath.Join(t.TempDir(), "workload.json")
		if err := writeJSON(path, w); err != nil {
			t.Fatal(err)
		}
		back, err := ReadWorkload(path)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(w, back); diff != "" {
			t.Errorf("workload.json round trip (-want +got):\n%s", diff)
		}
		for _, k := range w.KeySpecs() {
			if err := k.Validate(); err != nil {
				t.Errorf("clients %d: %v", clients, err)
			}
		}
		for _, k := range w.Keys {
			total := k.Demand * float64(clients)
			if k.Light {
				if total >= k.RatePerSecond() {
					t.Errorf("clients %d: light key %s: demand %.0f/s, want below its limit %.0f/s", clients, k.Key, total, k.RatePerSecond())
				}
				continue
			}
			if total < 3*k.RatePerSecond() {
				t.Errorf("clients %d: key %s: demand %.0f/s, want at least 3x its limit %.0f/s", clients, k.Key, total, k.RatePerSecond())
			}
		}
	}
}
