package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/leasehold/leasehold/cluster"
	"github.com/leasehold/leasehold/fsm"
	"github.com/leasehold/leasehold/internal/clustertest"
	"github.com/leasehold/leasehold/internal/loopback"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// TestLimitsSetRangeChecksEveryNumber: `limits set --algorithm
// sliding-window --slots 4294967297` stored 1 slot and `--slots -4294967286`
// stored 10, as the CLI converted with int32(*slots) (issue 13). Every number
// is checked before it is converted or sent, and the error names the flag
// and its range. The endpoints are never dialed: nothing listens there.
func TestLimitsSetRangeChecksEveryNumber(t *testing.T) {
	const noServer = "--endpoints=127.0.0.1:1"
	tests := []struct {
		name string
		args []string
		want string // a substring of the error
	}{
		{"slots above int32", []string{"--algorithm", "sliding-window", "--slots", "4294967297"}, "--slots 4294967297: must be in [0, 64]"},
		{"slots far below 0", []string{"--algorithm", "sliding-window", "--slots", "-4294967286"}, "--slots -4294967286: must be in [0, 64]"},
		{"slots 65", []string{"--algorithm", "sliding-window", "--slots", "65"}, "--slots 65: must be in [0, 64]"},
		{"more slots than nanoseconds", []string{"--limit", "5", "--algorithm", "sliding-window", "--slots", "64", "--per", "10ns"}, "--slots: 64 slots in a window of 10ns"},
		{"limit 0", []string{"--limit", "0"}, "--limit: limit is 0; it must be positive"},
		{"negative period", []string{"--limit", "5", "--per", "-1s"}, "--per: period is -1s"},
		{"negative burst", []string{"--limit", "5", "--burst", "-1"}, "--burst: burst is -1"},
		{"max lease above a minute", []string{"--limit", "5", "--max-lease", "2m"}, "--max-lease: max lease is 2m0s"},
		{"negative max debt", []string{"--limit", "5", "--max-debt", "-1"}, "--max-debt: max debt is -1; it must be at least 0"},
		{"max debt beyond int64", []string{"--limit", "5", "--max-debt", "9223372036854775808"}, "invalid value"},
		{"timeout 0", []string{"--limit", "5", "--timeout", "0s"}, "--timeout 0s: must be positive"},
		{"limit beyond int64", []string{"--limit", "9223372036854775808"}, "invalid value"},
		{"unknown algorithm", []string{"--limit", "5", "--algorithm", "leaky"}, `--algorithm "leaky"`},
		{"key not UTF-8", []string{"--limit", "5", "\xff"}, "not valid UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"set", noServer}, tt.args...)
			if !strings.Contains(strings.Join(tt.args, " "), "\xff") {
				args = append(args, "k")
			}
			err := runLimits(context.Background(), args, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("limits %q = %v, want an error containing %q", args, err, tt.want)
			}
		})
	}
}

func TestLimitFromFlags(t *testing.T) {
	l, err := limitFromFlags("sliding-window", 100, 64, 0, 64, false, 0, 0)
	if err != nil || l.GetSlots() != 64 || l.GetPeriodNs() != 64 {
		t.Errorf("limitFromFlags(64 slots in 64ns) = %v, %v; want it accepted", l, err)
	}
	l, err = limitFromFlags("token-bucket", 100, 1e9, 0, 0, true, 0, 0)
	if err != nil || !l.GetStrict() || l.GetLimit() != 100 {
		t.Errorf("limitFromFlags(token bucket) = %v, %v", l, err)
	}
	l, err = limitFromFlags("token-bucket", 100, 1e9, 0, 0, false, 0, 250)
	if err != nil || l.GetMaxDebt() != 250 {
		t.Errorf("limitFromFlags(max debt 250) = %v, %v", l, err)
	}
}

// TestLimitsSetAndGetMaxDebt: `limits set --max-debt` reaches the cluster and
// `limits get` prints it, over a real one-node cluster.
func TestLimitsSetAndGetMaxDebt(t *testing.T) {
	endpoint := startNode(t)
	ctx := t.Context()
	var out strings.Builder
	if err := runLimits(ctx, []string{"set", "--endpoints", endpoint, "--insecure", "--limit", "200000", "--per", "1m",
		"--max-debt", "50000", "openai:gpt-4.1/input-tokens"}, &out); err != nil {
		t.Fatalf("limits set: %v", err)
	}
	out.Reset()
	if err := runLimits(ctx, []string{"get", "--endpoints", endpoint, "--insecure", "openai:gpt-4.1/input-tokens"}, &out); err != nil {
		t.Fatalf("limits get: %v", err)
	}
	var got struct {
		Limit   int64 `json:"limit"`
		MaxDebt int64 `json:"max_debt"`
	}
	if err := json.Unmarshal([]byte(out.String()), &got); err != nil || got.Limit != 200000 || got.MaxDebt != 50000 {
		t.Errorf("limits get printed %q (%v); want limit 200000 and max_debt 50000", out.String(), err)
	}
}

// TestLimitsSetMaxDebtOnASlidingWindowWasDropped: `limits set --algorithm
// sliding-window --max-debt 5` answered "set k" and stored max_debt 0, as
// the state machine drops the fields an algorithm does not use. Every such
// flag is now refused before anything is sent, naming it.
func TestLimitsSetMaxDebtOnASlidingWindowWasDropped(t *testing.T) {
	const noServer = "--endpoints=127.0.0.1:1"
	for alg, names := range unusedFlags {
		for _, name := range names {
			value := "5"
			switch name {
			case "per":
				value = "1m"
			case "strict":
				value = "true"
			}
			args := []string{"set", noServer, "--algorithm", alg, "--limit", "10", "--" + name + "=" + value, "k"}
			err := runLimits(context.Background(), args, io.Discard)
			if err == nil || !strings.Contains(err.Error(), "--"+name+": a "+alg+" limit does not use it") {
				t.Errorf("limits %q = %v; want it refused, naming --%s", args, err, name)
			}
		}
	}
	// The flags an algorithm uses pass.
	for alg, used := range map[string][]string{
		"token-bucket":   {"limit", "per", "burst", "strict", "max-lease", "max-debt"},
		"sliding-window": {"limit", "per", "slots", "max-lease"},
		"concurrency":    {"limit", "max-lease"},
	} {
		fs := flag.NewFlagSet("limits set", flag.ContinueOnError)
		for _, name := range append(used, "algorithm") {
			fs.String(name, "", "")
			if err := fs.Set(name, "1"); err != nil {
				t.Fatal(err)
			}
		}
		if err := unusedLimitFlag(fs, alg); err != nil {
			t.Errorf("%s with %v: %v", alg, used, err)
		}
	}
}

// TestUnusedFlagsAreWhatNormalizeDrops: the flags limits set refuses for an
// algorithm are exactly those whose field fsm.Limit.Normalize clears for it,
// so the list cannot drift from the state machine.
func TestUnusedFlagsAreWhatNormalizeDrops(t *testing.T) {
	for alg, fa := range map[string]fsm.Algorithm{
		"token-bucket": fsm.TokenBucket, "sliding-window": fsm.SlidingWindow, "concurrency": fsm.Concurrency,
	} {
		in := fsm.Limit{Algorithm: fa, Limit: 10, Period: time.Minute, Burst: 7, Slots: 4, Strict: true,
			MaxLease: time.Second, MaxDebt: 3}
		out := in.Normalize()
		var dropped []string
		for name, kept := range map[string]bool{
			"per": out.Period == in.Period, "burst": out.Burst == in.Burst, "slots": out.Slots == in.Slots,
			"strict": out.Strict == in.Strict, "max-lease": out.MaxLease == in.MaxLease, "max-debt": out.MaxDebt == in.MaxDebt,
			"limit": out.Limit == in.Limit,
		} {
			if !kept {
				dropped = append(dropped, name)
			}
		}
		slices.Sort(dropped)
		want := slices.Sorted(slices.Values(unusedFlags[alg]))
		if !slices.Equal(dropped, want) {
			t.Errorf("%s: Normalize drops %v; limits set refuses %v", alg, dropped, want)
		}
	}
}

// TestLimitsDeleteOfAKeyWithNoLimitSaidDeleted: `limits delete --key
// nosuch` printed "deleted nosuch" and exited 0, so a misspelt key was
// silently "done". It now fails as `limits get` of a missing key does (main
// prints the error to stderr and exits 1); a key with a limit still says
// deleted, and the same key deleted again has none. Over a real one-node
// cluster.
func TestLimitsDeleteOfAKeyWithNoLimitSaidDeleted(t *testing.T) {
	endpoint := startNode(t)
	ctx := t.Context()
	run := func(args ...string) (string, error) {
		var out strings.Builder
		err := runLimits(ctx, append([]string{args[0], "--endpoints", endpoint, "--insecure"}, args[1:]...), &out)
		return out.String(), err
	}
	if out, err := run("delete", "nosuch"); err == nil || err.Error() != `key "nosuch" has no limit` || out != "" {
		t.Errorf("limits delete nosuch: printed %q, error %v; want nothing printed and the error key \"nosuch\" has no limit", out, err)
	}
	if _, err := run("set", "--limit", "10", "k"); err != nil {
		t.Fatalf("limits set: %v", err)
	}
	if out, err := run("delete", "k"); err != nil || out != "deleted k\n" {
		t.Errorf("limits delete k (set): printed %q, error %v; want \"deleted k\"", out, err)
	}
	if out, err := run("delete", "k"); err == nil || err.Error() != `key "k" has no limit` || out != "" {
		t.Errorf("limits delete k (deleted already): printed %q, error %v; want the error key \"k\" has no limit", out, err)
	}
}

// previousRelease is a node as a leader of the previous release answers
// DeleteLimit: without DeleteLimitResponse.found.
type previousRelease struct{ *cluster.Node }

func (p previousRelease) DeleteLimit(ctx context.Context, req *pb.DeleteLimitRequest) (*pb.DeleteLimitResponse, error) {
	resp, err := p.Node.DeleteLimit(ctx, req)
	if resp != nil {
		resp.Found = nil
	}
	return resp, err
}

// answerLost is a node whose first DeleteLimit applies and whose answer is
// lost on the way (UNAVAILABLE), as a dropped connection loses it.
type answerLost struct {
	*cluster.Node
	lost atomic.Bool
}

func (a *answerLost) DeleteLimit(ctx context.Context, req *pb.DeleteLimitRequest) (*pb.DeleteLimitResponse, error) {
	resp, err := a.Node.DeleteLimit(ctx, req)
	if err == nil && a.lost.CompareAndSwap(false, true) {
		return nil, fmt.Errorf("the connection dropped: %w", transport.ErrUnknownOutcome)
	}
	return resp, err
}

// TestLimitsDeleteRetriedAfterALostAnswer: a DeleteLimit is not
// deduplicated, so the attempt after one whose answer was lost finds no
// limit: a review found the CLI then said the key had none and exited 1,
// for a delete that happened. It says the earlier attempt may have.
func TestLimitsDeleteRetriedAfterALostAnswer(t *testing.T) {
	node, endpoint := clustertest.Start(t)
	limitsOut(t, endpoint, "set", "--limit", "10", "k")
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	transport.Register(srv, &answerLost{Node: node})
	served := make(chan struct{})
	go func() { _ = srv.Serve(lis); close(served) }()
	t.Cleanup(func() { srv.Stop(); <-served })

	var out strings.Builder
	err = runLimits(t.Context(), []string{"delete", "--endpoints", lis.Addr().String(), "--insecure", "k"}, &out)
	if err != nil || !strings.Contains(out.String(), "k has no limit now (an earlier attempt, whose answer was lost, may have deleted it)") {
		t.Errorf("limits delete whose first answer was lost: printed %q, error %v; want it to say an earlier attempt may have deleted it", out.String(), err)
	}
}

// follower answers every DeleteLimit with NotLeader, naming leader.
type follower struct {
	*cluster.Node
	leader string
}

func (f follower) DeleteLimit(context.Context, *pb.DeleteLimitRequest) (*pb.DeleteLimitResponse, error) {
	return nil, &transport.NotLeaderError{LeaderID: "n1", LeaderClientAddr: f.leader}
}

// TestLimitsDeleteAfterAFollowersNotLeaderSaysNoLimit: a follower's
// NotLeader applied nothing, so a key the leader then finds without a limit
// has none, exit 1. Regression: any second attempt counted as one that may
// have deleted it, and a follower named first in --endpoints made every
// delete of a missing key say so, exit 0.
func TestLimitsDeleteAfterAFollowersNotLeaderSaysNoLimit(t *testing.T) {
	node, endpoint := clustertest.Start(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	transport.Register(srv, follower{Node: node, leader: endpoint})
	served := make(chan struct{})
	go func() { _ = srv.Serve(lis); close(served) }()
	t.Cleanup(func() { srv.Stop(); <-served })

	var out strings.Builder
	err = runLimits(t.Context(), []string{"delete", "--endpoints", lis.Addr().String() + "," + endpoint, "--insecure", "nosuch"}, &out)
	if err == nil || err.Error() != `key "nosuch" has no limit` {
		t.Errorf("limits delete nosuch, a follower first: printed %q, error %v; want the error key \"nosuch\" has no limit", out.String(), err)
	}
}

// TestLimitsDeleteOnALeaderOfThePreviousRelease: during a rolling upgrade
// the leader may answer without found. The delete applied and whether the
// key had a limit is unknown, so the CLI says deleted, as it did, rather
// than that a key it may have deleted had none.
func TestLimitsDeleteOnALeaderOfThePreviousRelease(t *testing.T) {
	node, _ := clustertest.Start(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	transport.Register(srv, previousRelease{node})
	served := make(chan struct{})
	go func() { _ = srv.Serve(lis); close(served) }()
	t.Cleanup(func() { srv.Stop(); <-served })

	var out strings.Builder
	if err := runLimits(t.Context(), []string{"delete", "--endpoints", lis.Addr().String(), "--insecure", "nosuch"}, &out); err != nil || out.String() != "deleted nosuch\n" {
		t.Errorf("limits delete on an old leader: printed %q, error %v; want \"deleted nosuch\"", out.String(), err)
	}
}

// silentNode accepts connections and never answers on them, as a node
// stopped with kill -STOP does, until the test ends; it returns its
// address.
func silentNode(t *testing.T) string {
	t.Helper()
	addr, stop, err := loopback.Silent()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return addr
}

// TestLimitsGetWithAStoppedNodeFirst: with the first endpoint a stopped
// node (kill -STOP: it accepts, never answers), `limits get` spent its
// whole --timeout (5 s) there and failed, never asking the next. It must
// answer from the node that leads; `status` answers for it and names the
// stopped one, exiting 1.
func TestLimitsGetWithAStoppedNodeFirst(t *testing.T) {
	_, endpoint := clustertest.Start(t)
	limitsOut(t, endpoint, "set", "--limit", "10", "k")
	endpoints := silentNode(t) + "," + endpoint
	if got := limitsOut(t, endpoints, "get", "k"); !strings.Contains(got, `"limit":10`) {
		t.Errorf("limits get with a stopped node first printed %q; want the limit", got)
	}
	var out strings.Builder
	err := runStatus(t.Context(), []string{"--endpoints", endpoints, "--insecure"}, &out)
	if err == nil || !strings.Contains(err.Error(), "1 of 2 endpoints did not answer") || !strings.Contains(out.String(), endpoint) {
		t.Errorf("status with a stopped node first = %v, printed\n%s\nwant the live node's row and the stopped one named", err, out.String())
	}
}
