//go:build unix

package jepsen

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRunCentralWindowAnswerSpentLate is fsm/DESIGN.md's "central decision
// answered late" on a real cluster: the sw-central key (10 per 1s, decided
// centrally) under stall-answers faults, which hold the leader's answers
// for longer than the window and then deliver them. An SDK that admits a
// central window grant whenever its answer arrives puts the late answer's
// tokens in the same real window as the next window's, and the admissions
// check (which counts a window's central admission from its answer,
// centralAdmittedFrom) must say so: on the SDK before its fix, 12 in 5.5ms
// and 12 in 9.1ms in two runs. A correct SDK keeps the run valid. The test
// also checks that the key was decided centrally and that the fault made
// answers late, so that a valid run is not a vacuous one. About 20s plus
// the build of the leasehold binary.
func TestRunCentralWindowAnswerSpentLate(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const key = "sw-central"
	var wl Workload
	for _, k := range DefaultWorkload(2).Keys {
		if k.Key == key {
			wl.Keys = append(wl.Keys, k)
		}
	}
	if len(wl.Keys) != 1 {
		t.Fatalf("the default workload has no key %q", key)
	}
	var log strings.Builder
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	out, err := Run(ctx, RunConfig{
		Time: 20 * time.Second, Nodes: 3, Clients: 2, Seed: 1, Nemeses: []string{StallAnswers}, Workload: &wl,
		Dir: t.TempDir(), Worker: []string{self, workerArg}, Log: &log,
	})
	t.Logf("%s", log.String())
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Log(out.Verdict)

	b, err := os.ReadFile(filepath.Join(out.Dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		Harness []harnessCheck `json:"harness"`
		Checks  []checkSummary `json:"checks"`
		Faults  int64          `json:"faults"`
	}
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	for _, h := range res.Harness {
		if !h.Valid {
			t.Errorf("harness check %s failed (%s): the fault itself must have worked", h.Name, h.Summary)
		}
	}
	if res.Faults == 0 {
		t.Errorf("no stall-answers fault ran")
	}

	f, err := os.Open(filepath.Join(out.Dir, "history.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	events, err := ReadHistory(f)
	if err != nil {
		t.Fatal(err)
	}
	ops, _ := pairOps(events)
	var grants, late int
	for _, o := range ops {
		if o.Op != OpGrant || o.Invoke.Key != key || !o.OK() {
			continue
		}
		grants++
		// Central: asked with no lease (ttl 0: Value "central") and
		// granted none; the answer's ttl is the span it was counted over.
		if o.Complete.Lease != 0 || o.Invoke.Value != ValueCentral {
			t.Errorf("grant of %s at %d is not a central decision: invoke %+v, ok %+v", key, o.Invoke.Time, o.Invoke, o.Complete)
		}
		if o.Complete.Time-o.Invoke.Time > int64(time.Second) {
			late++
		}
	}
	t.Logf("%d central grants of %s, %d answered more than a window (1s) after their invoke", grants, key, late)
	if grants == 0 || late == 0 {
		t.Errorf("%d grants, %d answered late: the run did not test a late central answer", grants, late)
	}

	if !out.Valid {
		for _, c := range res.Checks {
			if !c.Valid {
				t.Errorf("check %s failed: %s", c.Name, c.Summary)
			}
		}
		t.Fatalf("run not valid: %s", out.Verdict)
	}
}
