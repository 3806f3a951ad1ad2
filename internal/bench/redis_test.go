package bench

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/bench/redislua"
)

// TestRedisSkewOverAdmits runs the Lua token bucket against a real, private
// redis-server: one client with a correct clock stays within B + r·Δ
// exactly, and two clients whose clocks are 2s apart over-admit by far. It
// is skipped when redis-server is not on PATH.
func TestRedisSkewOverAdmits(t *testing.T) {
	ctx := context.Background()
	l := startLocalRedis(t, (*Local).StartRedis)
	w := Workload{Clients: 1, Keys: 1, Duration: 300 * time.Millisecond, Rate: 100, Per: time.Second, Burst: 100}
	rep, err := RunRedis(ctx, l.RedisAddr, 0, w, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Over != 0 || rep.Admitted < w.Burst {
		t.Errorf("one client, correct clock: %s; want at least the burst and nothing over", rep.Summary())
	}
	w.Clients = 2
	rep, err = RunRedis(ctx, l.RedisAddr, 2*time.Second, w, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	// Each switch between the two clients credits up to a whole burst.
	if rep.Over < w.Burst {
		t.Errorf("two clients 4s apart: %s; want over-admission of at least a burst", rep.Summary())
	}
}

// TestRedisDurable starts the durable Redis peers and checks that they are
// what their rows claim: each fsyncs its append-only file on every write,
// the replicated one has a replica that acknowledges writes, and a run
// against it WAITs for that replica after every decision (a WAIT for two
// replicas, which it does not have, blocks, so the run ends by its context
// with nothing decided). It is skipped when redis-server is not on PATH.
func TestRedisDurable(t *testing.T) {
	ctx := context.Background()
	l := startLocalRedis(t, (*Local).StartRedisDurable)
	if n := len(l.Procs()); n != 3 {
		t.Fatalf("%d processes started; want 3 (AOF, primary, replica)", n)
	}
	for _, addr := range []string{l.RedisAOFAddr, l.RedisReplicatedAddr} {
		c, err := redislua.Dial(ctx, addr)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range [][2]string{{"appendonly", "yes"}, {"appendfsync", "always"}} {
			v, err := c.Do("CONFIG", "GET", want[0])
			if got, ok := v.([]any); err != nil || !ok || len(got) != 2 || got[1] != want[1] {
				t.Errorf("%s: CONFIG GET %s = %v, %v; want %s", addr, want[0], v, err, want[1])
			}
		}
		c.Close()
	}

	w := Workload{Clients: 2, Keys: 1, Duration: 300 * time.Millisecond, Rate: 1_000_000, Per: time.Second, Burst: 1_000_000}
	for _, target := range []RedisTarget{RedisAOF(l.RedisAOFAddr), RedisReplicated(l.RedisReplicatedAddr)} {
		rep, err := RunRedisOn(ctx, target, 0, w, Hooks{})
		if err != nil {
			t.Fatalf("%s: %v", target.Name, err)
		}
		if rep.Name != target.Name || rep.Admitted == 0 || rep.Over != 0 {
			t.Errorf("%s: %s; want its name, admissions and nothing over", target.Name, rep.Summary())
		}
	}
	// WAIT is really sent: waiting for a second replica never returns.
	two := RedisReplicated(l.RedisReplicatedAddr)
	two.WaitReplicas = 2
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	w.Clients = 1
	rep, err := RunRedisOn(cctx, two, 0, w, Hooks{})
	if err == nil || rep.Decisions != 0 {
		t.Errorf("waiting for 2 replicas of 1: %d decisions, error %v; want none, and an error", rep.Decisions, err)
	}
}

// startLocalRedis starts a private redis-server with start (StartRedis or
// StartRedisDurable) and stops it when t ends. It skips t when
// redis-server is not on PATH, and with -short.
func startLocalRedis(t *testing.T, start func(*Local, context.Context, string) error) *Local {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server not on PATH")
	}
	if testing.Short() {
		t.Skip("starts redis-server")
	}
	l := &Local{Dir: t.TempDir()}
	t.Cleanup(func() {
		if err := l.Stop(); err != nil {
			t.Error(err)
		}
	})
	if err := start(l, context.Background(), path); err != nil {
		t.Fatal(err)
	}
	return l
}
