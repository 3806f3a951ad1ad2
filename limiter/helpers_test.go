package limiter

import (
	"flag"
	"math/rand/v2"
	"testing"
	"time"
)

// seedFlag fixes the seed of the randomised tests; 0 picks a fresh one per run.
// A failing randomised test prints the seed it used, so
//
//	go test ./limiter/ -run TestBucketMatchesReference -limiter.seed=N
//
// replays it.
var seedFlag = flag.Uint64("limiter.seed", 0, "seed for the randomised limiter tests (0: random)")

// newRand returns a seeded generator and the seed, logging the seed so that a
// failure can be replayed.
func newRand(t testing.TB) (*rand.Rand, uint64) {
	t.Helper()
	seed := *seedFlag
	if seed == 0 {
		seed = rand.Uint64()
	}
	t.Logf("seed %d (replay with -limiter.seed=%d)", seed, seed)
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), seed
}

// sec and ms are log times and durations in nanoseconds, for readable tables.
const (
	ns  = int64(1)
	ms  = int64(time.Millisecond)
	sec = int64(time.Second)
)

// errCount returns how many errors err reports: the length of a joined error's
// list, 1 for any other non-nil error, 0 for nil.
func errCount(err error) int {
	if err == nil {
		return 0
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return len(j.Unwrap())
	}
	return 1
}
