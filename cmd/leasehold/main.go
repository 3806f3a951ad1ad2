// Command leasehold runs and operates a Leasehold cluster.
//
//	leasehold serve    --id n1 --data DIR --grpc-addr ADDR --raft-addr ADDR --peers n1=ADDR,...
//	                   [--tls-ca F --tls-cert F --tls-key F | --insecure [--insecure-allow-remote]]
//	leasehold cluster  --nodes 3 --dir ./data --base-port 7100 [--insecure] [--client-inline-limits=false] [-- serve flags]
//	leasehold serve    --data DIR --gossip-addr ADDR (--join ADDR,... | --bootstrap-expect N) [--gossip-key-file F] ...
//	leasehold status   --endpoints ADDR,... [--json] [--ca F --cert F --key F | --insecure]   (exit 1 if a node did not answer)
//	leasehold members  --endpoints ADDR,... [--json]
//	leasehold remove   --endpoints ADDR,... [--force] ID
//	leasehold limits   set|get|delete --endpoints ADDR,... KEY [flags]; limits delete --prefix P [--unpinned] [--dry-run]; limits list [flags]; limits apply [--prune] [--dry-run] [flags] FILE
//	leasehold bench    --endpoints ADDR,... --clients N --keys K --duration D [--mode lease|central]
//	leasehold certs    ca|node|operator|client [--dir DIR] [NAME]
//	leasehold ai-demo  [--duration 15s] [--stop-duration 6s] [--workers 4 --goroutines 16] [--rpm N --tpm N]
//	leasehold version
//
// TLS is the default: serve needs its three --tls-* files or --insecure, and
// the commands that dial a cluster take a certificate from --ca, --cert and
// --key or from $LEASEHOLD_CA, $LEASEHOLD_CERT and $LEASEHOLD_KEY, or
// --insecure. `leasehold cluster` makes a CA and certificates in <dir>/tls
// on first run and prints the files to use.
//
// SIGINT, SIGTERM and SIGHUP end a command's context: serve then stops
// gracefully (it hands leadership over and closes its stores), cluster
// stops its nodes. No command reloads anything on SIGHUP.
//
// `leasehold -h` and a command's -h print their usage on stdout and exit
// 0; a command line that does not parse exits 2, a command that fails 1.
//
// Flags, logging and signals live here; everything worth testing lives in the
// packages it wires together.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/leasehold/leasehold/internal/chaosclock"
)

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string, stdout io.Writer) error
	hidden        bool // not listed: a child process another command starts, or an alias
}

var commands = []command{
	{"serve", "run one node", runServe, false},
	{"cluster", "run a local N-node cluster of serve processes", runCluster, false},
	{"status", "show each node's view of the cluster; exit 1 if a node did not answer", runStatus, false},
	{"members", "list the members as the leader sees them (gossip, suffrage, health)", runMembers, false},
	{"remove", "remove a member from the cluster (operator)", runRemove, false},
	{"limits", "set, get, delete, list or apply (from a file) keys' limits on the server", runLimits, false},
	{"bench", "load a cluster (or Redis + Lua) with the SDK; `bench compare` runs both", runBench, false},
	{"certs", "make a CA and node, operator and client certificates", runCerts, false},
	{"ai-demo", "guard a fake AI provider's limits from 4 processes: Leasehold vs per-process x/time/rate vs none", runAIDemo, false},
	{"ai-demo-worker", "one worker process of ai-demo", runAIDemoWorker, true},
	{"version", "print this build's version, revision and Go version", runVersion, false},
	{"--version", "the same, as many commands take it", runVersion, true},
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: leasehold <command> [flags]")
	fmt.Fprintln(w)
	for _, c := range commands {
		if c.hidden {
			continue
		}
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'leasehold <command> -h' for a command's flags.")
}

func main() {
	if len(os.Args) < 2 {
		usage(os.Stderr)
		os.Exit(2)
	}
	if h := os.Args[1]; h == "-h" || h == "-help" || h == "--help" || h == "help" {
		usage(os.Stdout)
		return
	}
	// SIGHUP too: its default action kills the process at once, which
	// skips serve's graceful stop (a closed terminal, or an operator
	// expecting a reload, would do that).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	for _, c := range commands {
		if c.name != os.Args[1] {
			continue
		}
		err := c.run(ctx, os.Args[2:], os.Stdout)
		if err == nil || errors.Is(err, flag.ErrHelp) {
			return // done, or asked for help, which is not an error
		}
		fmt.Fprintf(os.Stderr, "leasehold %s: %v\n", c.name, err)
		if _, ok := errors.AsType[*usageError](err); ok {
			os.Exit(2)
		}
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "leasehold: unknown command %q\n\n", os.Args[1])
	usage(os.Stderr)
	os.Exit(2)
}

// usageError is a command line that did not parse: exit status 2, as for
// an unknown command, where a command that failed exits 1.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// parseFlags parses args into fs. The usage asked for with -h goes to
// stdout, for a pager or grep, and parseFlags returns flag.ErrHelp; a flag
// that does not parse is a *usageError, its message and the usage on
// stderr.
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	var out bytes.Buffer
	fs.SetOutput(&out)
	err := fs.Parse(args)
	fs.SetOutput(nil) // the default, stderr, for a usage the command prints later
	switch {
	case errors.Is(err, flag.ErrHelp):
		stdout.Write(out.Bytes())
		return err
	case err != nil:
		os.Stderr.Write(out.Bytes())
		return &usageError{err}
	}
	return nil
}

// isSet reports whether flag name was given on the command line.
func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// newLogger returns a text logger on stderr at the named level.
func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	if chaosclock.Enabled {
		// A test build: stamp lines with the knob's wall clock, so a log
		// shows the wall-clock jumps the chaos harness made.
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				a.Value = slog.TimeValue(chaosclock.Now())
			}
			return a
		}
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
}

// splitList splits a comma-separated flag value, dropping empty parts.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
