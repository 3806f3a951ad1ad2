package bench

import (
	"context"
	"os/exec"
	"testing"
	"time"
)

// TestRedisSkewOverAdmits runs the Lua token bucket against a real, private
// redis-server: one client with a correct clock stays within B + r·Δ
// exactly, and two clients whose clocks are 2s apart over-admit by far. It
// is skipped when redis-server is not on PATH.
func TestRedisSkewOverAdmits(t *testing.T) {
	path, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server not on PATH")
	}
	if testing.Short() {
		t.Skip("starts redis-server")
	}
	ctx := context.Background()
	l := &Local{Dir: t.TempDir()}
	t.Cleanup(func() {
		if err := l.Stop(); err != nil {
			t.Error(err)
		}
	})
	if err := l.StartRedis(ctx, path); err != nil {
		t.Fatal(err)
	}
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
