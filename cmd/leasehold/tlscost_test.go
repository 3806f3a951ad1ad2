package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/leasehold/leasehold/cluster"
	"github.com/leasehold/leasehold/internal/bench"
	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/internal/pki/pkitest"
	"github.com/leasehold/leasehold/internal/proc"
	"github.com/leasehold/leasehold/transport"
)

// startCluster runs n nodes in this process, each serving the client API on
// a loopback port behind a Guard, with TLS on Raft and the client API if d
// is not nil, and returns the endpoints and the operator's certificate (nil
// without TLS) once a leader is known. Everything stops when tb ends.
func startCluster(tb testing.TB, n int, d *pkitest.Dir) ([]string, *bench.TLSFiles) {
	tb.Helper()
	raftLns := make([]net.Listener, n)
	peers := make([]cluster.Peer, n)
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		raftLns[i] = ln
		peers[i] = cluster.Peer{ID: fmt.Sprintf("n%d", i+1), RaftAddr: ln.Addr().String()}
	}
	quiet := slog.New(slog.DiscardHandler)
	// Open every node at once, as a cluster's first start does: opened one
	// after another, the last found the first two already leading each
	// other and (rightly) refused to bootstrap an empty directory beside
	// them (TestBenchScrapesTheSDKCollector failed so in CI).
	nodes := make([]*cluster.Node, n)
	errs := make([]error, n)
	srcs := make([]*pki.Source, n)
	var wg sync.WaitGroup
	for i := range n {
		cfg := cluster.DefaultConfig()
		cfg.ID, cfg.Dir, cfg.Listener, cfg.RaftAddr = peers[i].ID, filepath.Join(tb.TempDir(), peers[i].ID), raftLns[i], peers[i].RaftAddr
		cfg.Peers, cfg.Logger = peers, quiet
		if d != nil {
			srcs[i] = d.Source(pkitest.Node(cfg.ID))
			cfg.TLS = srcs[i]
		}
		wg.Go(func() { nodes[i], errs[i] = cluster.Open(context.Background(), cfg) })
	}
	wg.Wait()
	for i, node := range nodes {
		if node != nil {
			tb.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				node.Close(ctx)
			})
		}
		if errs[i] != nil {
			tb.Fatal(errs[i])
		}
	}
	var endpoints []string
	for i, node := range nodes {
		gcfg := transport.DefaultGuardConfig()
		gcfg.Logger = quiet
		if srcs[i] != nil {
			gcfg.TLS = srcs[i].ServerConfig(nil)
		}
		guard, err := transport.NewGuard(gcfg)
		if err != nil {
			tb.Fatal(err)
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		srv := grpc.NewServer(guard.ServerOptions()...)
		transport.Register(srv, node)
		served := make(chan struct{})
		go func() { _ = srv.Serve(guard.Listener(lis)); close(served) }()
		tb.Cleanup(func() {
			srv.Stop()
			<-served
		})
		endpoints = append(endpoints, lis.Addr().String())
	}
	var files *bench.TLSFiles
	if d != nil {
		f := d.Issue(pkitest.Operator("bench"))
		files = &bench.TLSFiles{CA: f.CA, Cert: f.Cert, Key: f.Key}
	}
	admin, err := proc.Dial(endpoints, security(files))
	if err != nil {
		tb.Fatal(err)
	}
	defer admin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := admin.WaitLeader(ctx); err != nil {
		tb.Fatal(err)
	}
	return endpoints, files
}

// BenchmarkTLSCost measures what TLS costs `leasehold bench`: two 3-node
// clusters in this process, one with TLS on Raft and the client API, one
// without, driven in turn by the bench's SDK workload in lease and central
// mode, for $LEASEHOLD_TLSCOST_ROUNDS rounds (default 3) of
// $LEASEHOLD_TLSCOST_SECONDS each (default 5), TLS off and on alternating;
// and, as `bench compare` does, central mode on a key far above demand with
// 64 goroutines per client, where every Allow is a round trip and a Raft
// commit ("central-rt"): the run where TLS's cost per request shows.
// It logs every run and reports the median decisions/s of each and the
// ratios TLS on / off. Run it alone, once:
//
//	go test -run '^$' -bench BenchmarkTLSCost -benchtime 1x ./cmd/leasehold/
func BenchmarkTLSCost(b *testing.B) {
	rounds := envInt(b, "LEASEHOLD_TLSCOST_ROUNDS", 3)
	secs := envInt(b, "LEASEHOLD_TLSCOST_SECONDS", 5)
	plainEPs, _ := startCluster(b, 3, nil)
	tlsEPs, files := startCluster(b, 3, pkitest.New(b))
	// waitLeader waits out an election the previous run's load may have
	// caused on the idle cluster (a starved heartbeat), so that the run
	// starts with a leader, as RunLeasehold expects.
	waitLeader := func(eps []string, files *bench.TLSFiles) {
		admin, err := proc.Dial(eps, security(files))
		if err != nil {
			b.Fatal(err)
		}
		defer admin.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.WaitLeader(ctx); err != nil {
			b.Fatal(err)
		}
	}
	w := bench.Workload{Clients: 8, Concurrency: 1, Keys: 1, Duration: time.Duration(secs) * time.Second,
		Rate: 1000, Burst: 1000, Per: time.Second}
	rt := w
	rt.Concurrency, rt.Rate, rt.Burst = 64, 1_000_000_000, 1_000_000_000
	runs := []struct {
		name string
		mode bench.Mode
		w    bench.Workload
	}{{"lease", bench.ModeLease, w}, {"central", bench.ModeCentral, w}, {"central-rt", bench.ModeCentral, rt}}
	rates := map[string][]float64{}
	for b.Loop() {
		for r := range rounds {
			for _, run := range runs {
				for _, on := range []bool{r%2 == 1, r%2 == 0} { // alternate which goes first
					eps, h := plainEPs, bench.Hooks{}
					if on {
						eps, h.TLS = tlsEPs, files
					}
					waitLeader(eps, h.TLS)
					rep, err := bench.RunLeasehold(context.Background(), eps, run.mode, run.w, h)
					if err != nil {
						b.Fatalf("%s tls=%v: %v", run.name, on, err)
					}
					name := fmt.Sprintf("%s tls=%v", run.name, on)
					rate := rep.Result.DecisionsPerSecond()
					rates[name] = append(rates[name], rate)
					b.Logf("round %d %-18s %10.0f decisions/s, p50 %v, p99 %v, %d acquires", r+1, name, rate,
						rep.Result.Latency.Quantile(0.5), rep.Result.Latency.Quantile(0.99), rep.SDK.Acquires)
				}
			}
		}
	}
	for _, run := range runs {
		off, on := median(rates[run.name+" tls=false"]), median(rates[run.name+" tls=true"])
		b.Logf("%-10s median decisions/s: TLS off %.0f, on %.0f, ratio %.3f", run.name, off, on, on/off)
		b.ReportMetric(on/off, run.name+"-tls-ratio")
	}
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func envInt(tb testing.TB, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		tb.Fatalf("$%s=%q: want a positive integer", name, v)
	}
	return n
}
