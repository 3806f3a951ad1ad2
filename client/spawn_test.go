package client_test

import (
	"bytes"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/leasehold/leasehold/client"
)

// goid returns the id of the calling goroutine, from its stack trace's
// header ("goroutine 42 [running]:"), or 0 if it cannot be read.
func goid() uint64 {
	var buf [64]byte
	b := bytes.TrimPrefix(buf[:runtime.Stack(buf[:], false)], []byte("goroutine "))
	if i := bytes.IndexByte(b, ' '); i > 0 {
		id, _ := strconv.ParseUint(string(b[:i]), 10, 64)
		return id
	}
	return 0
}

// TestSpawnReusesAnIdleWorker: background work spawned while a worker
// waits runs on that worker, not on a new goroutine, whose stack would
// grow again on its first gRPC call (on many keys: every central decision,
// each Limiter having its own sender).
func TestSpawnReusesAnIdleWorker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newFake(t, 1).dial(t)
		ids := make(chan uint64, 1)
		var first uint64
		for i := range 4 {
			if !client.SpawnForTest(c, func() { ids <- goid() }) {
				t.Fatalf("spawn #%d = false on an open Client", i+1)
			}
			id := <-ids
			switch {
			case id == 0:
				t.Fatal("cannot read goroutine ids")
			case i == 0:
				first = id
			case id != first:
				t.Errorf("spawn #%d ran on goroutine %d, not on the idle worker %d", i+1, id, first)
			}
			synctest.Wait() // the worker is back, waiting for work
			if n := client.IdleWorkersForTest(c); n != 1 {
				t.Errorf("after spawn #%d: %d idle workers, want 1", i+1, n)
			}
		}
	})
}

// TestSpawnKeepsAtMostMaxIdleWorkers: after a burst of background work
// that all ran at once, at most MaxIdleWorkers workers wait for more, the
// others end; Close ends the idle ones (it waits for them, and the bubble
// ends with no goroutine left) and spawn then refuses.
func TestSpawnKeepsAtMostMaxIdleWorkers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newFake(t, 1).dial(t)
		const burst = 3 * client.MaxIdleWorkers
		release := make(chan struct{})
		var started sync.WaitGroup
		started.Add(burst)
		for range burst {
			client.SpawnForTest(c, func() {
				started.Done()
				<-release
			})
		}
		started.Wait() // all running at once: none could take another's
		close(release)
		synctest.Wait()
		if n := client.IdleWorkersForTest(c); n != client.MaxIdleWorkers {
			t.Errorf("%d idle workers after a burst of %d, want %d", n, burst, client.MaxIdleWorkers)
		}

		if err := c.Close(); err != nil {
			t.Fatalf("Close = %v", err)
		}
		if n := client.IdleWorkersForTest(c); n != 0 {
			t.Errorf("%d workers still idle after Close", n)
		}
		if client.SpawnForTest(c, func() { t.Error("spawned after Close") }) {
			t.Error("spawn after Close = true")
		}
	})
}
