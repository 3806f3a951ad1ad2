//go:build unix

// Command jepsen runs Leasehold's chaos test: real `leasehold serve` nodes
// on loopback, client worker processes using the real SDK, faults from
// outside (kill -9, SIGSTOP/SIGCONT, partitions, answers held, clock and
// membership changes), then checkers over the recorded history.
//
//	go run ./cmd/jepsen --time 60s --nodes 3 --seed 7 [--nemesis kill,pause,stall,membership] [--clients 4] [--dir reports] [--insecure]
//
// The nodes serve mutual TLS with certificates made for the run (each
// worker presents a client certificate), unless --insecure.
//
// It prints its seed and schedule first and a one-line verdict last, and
// exits 0 when the run is valid, 1 when a checker found a violation, and 2
// when it could not tell (the run failed to start, was interrupted, or no
// checker could run). The report directory holds history.jsonl,
// results.json, plot.svg, keys.json, workload.json, run.json and each
// process's log.
//
// `jepsen worker ...` is the client worker the runner starts (one per
// --clients); it is not meant to be run by hand.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/leasehold/leasehold/jepsen"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(os.Args) > 1 && os.Args[1] == "worker" {
		code := jepsen.WorkerMain(ctx, os.Args[2:])
		stop()
		os.Exit(code)
	}
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("jepsen", flag.ContinueOnError)
	d := jepsen.RunConfig{}
	fs.DurationVar(&d.Time, "time", 60*time.Second, "how long the client workload runs (5s to 24h)")
	fs.IntVar(&d.Nodes, "nodes", 3, "cluster size, 1 to 9")
	fs.IntVar(&d.Clients, "clients", 4, "client worker processes, 1 to 32")
	seed := fs.Int64("seed", 0, "seed of the nemesis schedule and the workload's pacing; 0 picks one")
	nemesis := fs.String("nemesis", "kill,pause,partition,stall,clock,membership", "faults: groups kill, pause, partition, stall, clock, membership, "+
		"clock-out-of-spec (meant to fail), or kinds such as kill-leader, partition-one-way, stall-answers, member-replace; none for none")
	fs.StringVar(&d.Dir, "dir", "reports", "parent of the run's report directory")
	fs.StringVar(&d.Leasehold, "leasehold", "", "a prebuilt leasehold binary (default: go build ./cmd/leasehold)")
	fs.BoolVar(&d.KeepData, "keep-data", false, "keep the nodes' data directories and the built binary")
	fs.BoolVar(&d.Insecure, "insecure", false, "run the nodes and workers in plain text (default: mutual TLS, certificates made for the run)")
	if err := fs.Parse(args); err != nil {
		return 2 // the flag package printed why (or the help)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "jepsen: unexpected arguments %q\n", fs.Args())
		return 2
	}
	kinds, err := jepsen.ParseNemeses(*nemesis)
	if err != nil {
		fmt.Fprintln(os.Stderr, "jepsen: --nemesis:", err)
		return 2
	}
	d.Nemeses = kinds
	d.Seed = *seed
	if d.Seed == 0 {
		d.Seed = time.Now().UnixNano() % 1_000_000
	}
	d.Progress = os.Stderr
	if st, err := os.Stderr.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
		d.ProgressTTY = true
	}

	out, err := jepsen.Run(ctx, d)
	if err != nil && ctx.Err() != nil {
		fmt.Fprintf(os.Stderr, "jepsen: interrupted seed=%d; every process it started was stopped\n", d.Seed)
		return 2
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "jepsen: error seed=%d: %v\n", d.Seed, err)
		return 2
	}
	fmt.Println(out.Verdict)
	switch {
	case out.Valid:
		return 0
	case out.Unknown:
		return 2
	}
	return 1
}
