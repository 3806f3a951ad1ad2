//go:build unix

package jepsen

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// workerArg makes the test binary a client worker: the end-to-end test
// below starts it as `<test binary> jepsen-worker <flags>`, as cmd/jepsen
// starts itself as `jepsen worker <flags>`.
const workerArg = "jepsen-worker"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == workerArg {
		os.Exit(WorkerMain(context.Background(), os.Args[2:]))
	}
	os.Exit(m.Run())
}

// A short real run: three nodes, two workers, kill faults including a
// full-cluster kill, checked end to end. It takes about 20s plus the build
// of the leasehold binary.
func TestRunKillNemesis(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	kinds := []string{KillNode, KillLeader, KillAll}
	const runTime = 15 * time.Second
	// The first seed whose schedule kills the whole cluster and the leader.
	seed := int64(1)
	for ; seed < 1000; seed++ {
		faults := NewSchedule(ScheduleConfig{Seed: seed, Duration: runTime, Nodes: 3, Clients: 2, Kinds: kinds, Lease: 2 * time.Second})
		if slices.ContainsFunc(faults, func(f Fault) bool { return f.Kind == KillAll }) &&
			slices.ContainsFunc(faults, func(f Fault) bool { return f.Kind == KillLeader }) {
			break
		}
	}
	var log strings.Builder
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	started := time.Now()
	out, err := Run(ctx, RunConfig{
		Time: runTime, Nodes: 3, Clients: 2, Seed: seed, Nemeses: kinds,
		Dir: t.TempDir(), Worker: []string{self, workerArg}, Log: &log,
	})
	t.Logf("seed %d, %v:\n%s", seed, time.Since(started).Round(time.Second), log.String())
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Log(out.Verdict)
	if !out.Valid {
		b, _ := os.ReadFile(filepath.Join(out.Dir, "results.json"))
		t.Fatalf("run not valid: %s\nresults.json:\n%s", out.Verdict, b)
	}
	if !strings.HasPrefix(out.Verdict, fmt.Sprintf("jepsen: valid seed=%d ", seed)) {
		t.Errorf("verdict %q", out.Verdict)
	}
	for _, name := range []string{"history.jsonl", "results.json", "plot.svg", "keys.json", "workload.json", "run.json", "n1.log", "c2.log"} {
		if _, err := os.Stat(filepath.Join(out.Dir, name)); err != nil {
			t.Errorf("report file: %v", err)
		}
	}
	for _, gone := range []string{"data", "leasehold", "history-c1.jsonl"} {
		if _, err := os.Stat(filepath.Join(out.Dir, gone)); !os.IsNotExist(err) {
			t.Errorf("%s left in the report directory (err %v)", gone, err)
		}
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
	count := map[string]int{}
	for i, e := range events {
		if i > 0 && e.Time < events[i-1].Time {
			t.Fatalf("history not sorted at line %d", i+1)
		}
		if e.Type == OK {
			count[e.Op]++
		}
		if e.Process == ProcessNemesis && e.Type == Invoke && e.Op == OpKill && strings.Count(e.Value, "n") == 3 {
			count["kill-all"]++
		}
		if e.Op == OpGrant && e.Type == OK && e.Lease != 0 && (e.TTL <= 0 || e.LogTime <= 0 || e.ClientID == "" || e.Seq == 0) {
			t.Errorf("lease grant without ttl, log time, client or seq: %+v", e)
		}
	}
	for _, op := range []string{OpAllow, OpGrant, OpRelease, OpKill, OpRestart, "kill-all"} {
		if count[op] == 0 {
			t.Errorf("no ok %s in the history (counts %v)", op, count)
		}
	}
}

// TestRunOutOfSpecClockIsCaught: a leader whose clock runs at twice real
// time, beyond the design's clock-rate bound, must make the run invalid,
// and the log-time and admission checkers must say why. It is the test that
// the checkers can fail on a real cluster, not only on made-up histories.
func TestRunOutOfSpecClockIsCaught(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	out, err := Run(ctx, RunConfig{
		Time: 15 * time.Second, Nodes: 3, Clients: 2, Seed: 1, Nemeses: []string{ClockFastLeader},
		Dir: t.TempDir(), Worker: []string{self, workerArg}, Log: &log,
	})
	t.Logf("%s", log.String())
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Log(out.Verdict)
	if out.Valid || out.Unknown {
		t.Fatalf("a leader clock at twice real time was not caught: %s", out.Verdict)
	}
	b, err := os.ReadFile(filepath.Join(out.Dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		Harness []harnessCheck `json:"harness"`
		Checks  []checkSummary `json:"checks"`
	}
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	for _, h := range res.Harness {
		if !h.Valid {
			t.Errorf("harness check %s failed (%s): the fault itself must have worked", h.Name, h.Summary)
		}
	}
	failed := map[string]bool{}
	for _, c := range res.Checks {
		failed[c.Name] = !c.Valid
	}
	for _, name := range []string{"log-time", "admissions"} {
		if !failed[name] {
			t.Errorf("checker %s passed; a leader clock at 2x must break it (checks %+v)", name, res.Checks)
		}
	}
}
