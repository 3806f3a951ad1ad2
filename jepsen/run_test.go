package jepsen

import (
	"context"
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
