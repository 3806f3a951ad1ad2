package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// runCluster starts N `leasehold serve` children on loopback, waits for a
// leader, prints the endpoints, and stops the children when it is told to stop.
// Started again with the same --dir, the nodes resume the same cluster.
func runCluster(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("cluster", flag.ContinueOnError)
	nodes := fs.Int("nodes", 3, "number of nodes, 1 to 9")
	dir := fs.String("dir", "./data", "parent of the nodes' data directories (n1, n2, ...) and logs")
	base := fs.Int("base-port", 7100, "node i serves clients on base+i and Raft on base+100+i")
	host := fs.String("host", "127.0.0.1", "loopback address to listen on")
	wait := fs.Duration("wait", 30*time.Second, "how long to wait for a leader")
	logLevel := fs.String("log-level", "info", "the nodes' log level")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *nodes < 1 || *nodes > 9 {
		return fmt.Errorf("--nodes %d: want 1 to 9", *nodes)
	}
	if *base < 1024 || *base+100+*nodes > 65535 {
		return fmt.Errorf("--base-port %d: want 1024 to %d", *base, 65535-100-*nodes)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary: %w", err)
	}

	var peers, grpcAddrs []string
	for i := 1; i <= *nodes; i++ {
		peers = append(peers, fmt.Sprintf("n%d=%s:%d", i, *host, *base+100+i))
		grpcAddrs = append(grpcAddrs, fmt.Sprintf("%s:%d", *host, *base+i))
	}
	exited := make(chan error, *nodes)
	var children []*exec.Cmd
	defer func() { stopChildren(children, exited) }()
	for i := 1; i <= *nodes; i++ {
		id := fmt.Sprintf("n%d", i)
		data := filepath.Join(*dir, id)
		if err := os.MkdirAll(data, 0o755); err != nil {
			return err
		}
		logFile, err := os.OpenFile(filepath.Join(*dir, id+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		cmd := exec.Command(self, "serve", "--id", id, "--data", data,
			"--grpc-addr", grpcAddrs[i-1], "--raft-addr", fmt.Sprintf("%s:%d", *host, *base+100+i),
			"--peers", strings.Join(peers, ","), "--log-level", *logLevel)
		cmd.Stdout, cmd.Stderr = logFile, logFile
		if err := cmd.Start(); err != nil {
			logFile.Close()
			return fmt.Errorf("start %s: %w", id, err)
		}
		logFile.Close() // the child has its own descriptor
		children = append(children, cmd)
		go func() {
			err := cmd.Wait()
			exited <- fmt.Errorf("node %s (pid %d) exited: %v; see %s", id, cmd.Process.Pid, err, filepath.Join(*dir, id+".log"))
		}()
		fmt.Fprintf(os.Stderr, "started %s pid %d: client %s, raft %s:%d, data %s\n", id, cmd.Process.Pid, grpcAddrs[i-1], *host, *base+100+i, data)
	}

	e, err := dialEndpoints(strings.Join(grpcAddrs, ","))
	if err != nil {
		return err
	}
	defer e.Close()
	leader, err := waitLeader(ctx, e, *wait, exited)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "leader: %s\n", leader)
	fmt.Fprintf(stdout, "endpoints: %s\n", strings.Join(grpcAddrs, ","))

	select {
	case <-ctx.Done():
		fmt.Fprintln(os.Stderr, "stopping the nodes")
		return nil
	case err := <-exited:
		exited <- err // let stopChildren count it
		return err
	}
}

// waitLeader polls the nodes' status until one reports itself leader.
func waitLeader(ctx context.Context, e *endpoints, limit time.Duration, exited chan error) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, cc := range e.conns {
			cctx, ccancel := context.WithTimeout(ctx, time.Second)
			st, err := pb.NewLeaseholdClient(cc).Status(cctx, &pb.StatusRequest{})
			ccancel()
			if err == nil && st.State == "leader" {
				return st.NodeId, nil
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no leader within %v: %w", limit, transport.FromStatus(ctx.Err()))
		case err := <-exited:
			exited <- err // let stopChildren count it
			return "", err
		case <-tick.C:
		}
	}
}

// stopChildren sends SIGTERM to every child still running, waits for them, and
// kills those that do not stop in time.
func stopChildren(children []*exec.Cmd, exited <-chan error) {
	if len(children) == 0 {
		return
	}
	for _, c := range children {
		_ = c.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.After(20 * time.Second)
	for range children {
		select {
		case <-exited:
		case <-deadline:
			for _, c := range children {
				if err := c.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
					fmt.Fprintf(os.Stderr, "kill pid %d: %v\n", c.Process.Pid, err)
				}
			}
			return
		}
	}
}
