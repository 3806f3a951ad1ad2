package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/leasehold/leasehold/internal/proc"
)

// runCluster starts N `leasehold serve` children on loopback, waits for a
// leader, prints the endpoints, and keeps the nodes running until it is
// told to stop (Ctrl-C, SIGTERM or SIGHUP), then stops them by PID. A node
// that exits meanwhile is reported on stderr and the others keep running;
// restartSignal (SIGUSR1) restarts every node that is down. Started again
// with the same --dir, the nodes resume the same cluster.
func runCluster(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("cluster", flag.ContinueOnError)
	nodes := fs.Int("nodes", 3, "number of nodes, 1 to 9")
	dir := fs.String("dir", "./data", "parent of the nodes' data directories (n1, n2, ...) and logs")
	base := fs.Int("base-port", 7100, "node i serves clients on base+i, Raft on base+100+i and HTTP (metrics, console) on base+200+i")
	host := fs.String("host", "127.0.0.1", "loopback address to listen on")
	wait := fs.Duration("wait", 30*time.Second, "how long to wait for a leader")
	logLevel := fs.String("log-level", "info", "the nodes' log level")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *nodes < 1 || *nodes > 9 {
		return fmt.Errorf("--nodes %d: want 1 to 9", *nodes)
	}
	if *base < 1024 || *base+200+*nodes > 65535 {
		return fmt.Errorf("--base-port %d: want 1024 to %d", *base, 65535-200-*nodes)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary: %w", err)
	}
	// Listen for the restart signal before any node runs: by default it
	// would end this process.
	restart := make(chan os.Signal, 1)
	if restartSignal != nil {
		signal.Notify(restart, restartSignal)
		defer signal.Stop(restart)
	}
	ctx, stopSignals := signal.NotifyContext(ctx, syscall.SIGHUP)
	defer stopSignals()

	specs, err := proc.Layout{Nodes: *nodes, Dir: *dir, Host: *host, BasePort: *base, LogLevel: *logLevel, HTTP: true}.Specs()
	if err != nil {
		return err
	}
	// Deaths the runner did not cause, reported by the loop below; before
	// a leader is up, WaitLeader reports one as its error.
	deaths := make(chan proc.Exit, 64)
	for i := range specs {
		specs[i].OnExit = func(e proc.Exit) {
			if !e.Expected {
				select {
				case deaths <- e:
				default: // 64 unreported deaths: the loop is not running
				}
			}
		}
	}
	c, err := proc.NewCluster(proc.ClusterConfig{Binary: self, Nodes: specs})
	if err != nil {
		return err
	}
	defer c.Close()
	defer func() {
		if err := c.StopAll(20 * time.Second); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}()
	for _, n := range c.Nodes() {
		if err := n.Start(); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "started %s pid %d: client %s, raft %s, http %s, data %s\n", n.ID(), n.PID(), n.ClientAddr(),
			n.RaftAddr(), n.HTTPAddr(), n.Spec().Data)
	}
	wctx, cancel := context.WithTimeout(ctx, *wait)
	leader, err := c.WaitLeader(wctx)
	cancel()
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "leader: %s\n", leader.ID())
	fmt.Fprintf(stdout, "endpoints: %s\n", strings.Join(c.Endpoints(), ","))
	printHTTP(stdout, c, leader, "http")
	fmt.Fprintf(os.Stderr, "leasehold cluster pid %d: a node that exits is reported here and the others keep running%s; Ctrl-C stops them all\n",
		os.Getpid(), restartHint())

	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(os.Stderr, "stopping the nodes")
			return nil
		case e := <-deaths:
			fmt.Fprintf(os.Stderr, "%s; the other nodes keep running%s\n", e, restartHint())
		case <-restart:
			restartDown(c)
		}
	}
}

// restartHint tells how to restart the nodes that are down.
func restartHint() string {
	if restartSignal == nil {
		return ""
	}
	return fmt.Sprintf("; `kill -%s %d` restarts the nodes that are down", restartSignalName, os.Getpid())
}

// restartDown starts every node of c that is not running, with the flags
// it had, and says so on stderr.
func restartDown(c *proc.Cluster) {
	var down int
	for _, n := range c.Nodes() {
		if n.Running() {
			continue
		}
		down++
		if err := n.Start(); err != nil {
			fmt.Fprintf(os.Stderr, "restart %s: %v\n", n.ID(), err)
			continue
		}
		fmt.Fprintf(os.Stderr, "restarted %s pid %d\n", n.ID(), n.PID())
	}
	if down == 0 {
		fmt.Fprintln(os.Stderr, "restart: every node is running")
	}
}
