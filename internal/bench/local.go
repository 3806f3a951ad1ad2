package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/leasehold/leasehold/internal/bench/redislua"
	"github.com/leasehold/leasehold/internal/loopback"
)

// Proc is a child process the bench started: a redis-server or a
// `leasehold serve` node. Stop it by its PID with Stop.
type Proc struct {
	Name   string
	Log    string // its stdout and stderr
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // set before exited is closed
}

// startProc starts path with args, its output appended to logPath.
func startProc(name, path string, args []string, logPath string) (*Proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own descriptor
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, Log: logPath, cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// PID returns the process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Exited is closed once the process has exited.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// exitError describes how the process ended; call after Exited.
func (p *Proc) exitError() error {
	return fmt.Errorf("%s (pid %d) exited: %v; see %s", p.Name, p.PID(), p.err, p.Log)
}

// Stop sends SIGTERM to the process by its PID, waits up to grace for it to
// exit, then sends SIGKILL and waits. It is a no-op once the process exited.
func (p *Proc) Stop(grace time.Duration) {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.exited:
	case <-t.C:
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// Local is a private Redis and a private Leasehold cluster on loopback,
// with their data and logs under Dir. Stop stops every process it started.
type Local struct {
	Dir       string
	RedisAddr string
	Endpoints []string
	procs     []*Proc
}

// Procs returns the processes started so far.
func (l *Local) Procs() []*Proc { return l.procs }

// StartRedis starts redis-server (the binary at path) on a free loopback
// port with persistence off (no RDB snapshots, no AOF), its working
// directory under l.Dir, and waits until it answers PING.
func (l *Local) StartRedis(ctx context.Context, path string) error {
	ports, err := loopback.FreePorts(1)
	if err != nil {
		return err
	}
	dir := filepath.Join(l.Dir, "redis")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	port := strconv.Itoa(ports[0])
	p, err := startProc("redis-server", path, []string{
		"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning",
	}, filepath.Join(l.Dir, "redis.log"))
	if err != nil {
		return err
	}
	l.procs = append(l.procs, p)
	l.RedisAddr = "127.0.0.1:" + port

	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		err := redislua.Ping(pctx, l.RedisAddr)
		pcancel()
		if err == nil {
			return nil
		}
		select {
		case <-p.Exited():
			return p.exitError()
		case <-ctx.Done():
			return fmt.Errorf("redis-server on %s did not answer PING: %w (last: %v)", l.RedisAddr, ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// StartCluster starts n `leasehold serve` nodes (the binary at path) on
// free loopback ports, with data and logs under l.Dir, and waits for a
// leader.
func (l *Local) StartCluster(ctx context.Context, path string, n int) error {
	ports, err := loopback.FreePorts(2 * n)
	if err != nil {
		return err
	}
	var peers, grpcAddrs, raftAddrs []string
	for i := range n {
		grpcAddrs = append(grpcAddrs, fmt.Sprintf("127.0.0.1:%d", ports[i]))
		raftAddrs = append(raftAddrs, fmt.Sprintf("127.0.0.1:%d", ports[n+i]))
		peers = append(peers, fmt.Sprintf("n%d=%s", i+1, raftAddrs[i]))
	}
	exited := make(chan error, n)
	for i := range n {
		id := fmt.Sprintf("n%d", i+1)
		data := filepath.Join(l.Dir, id)
		if err := os.MkdirAll(data, 0o755); err != nil {
			return err
		}
		p, err := startProc("leasehold node "+id, path, []string{"serve", "--id", id, "--data", data,
			"--grpc-addr", grpcAddrs[i], "--raft-addr", raftAddrs[i], "--peers", strings.Join(peers, ","),
			"--log-level", "warn"}, filepath.Join(l.Dir, id+".log"))
		if err != nil {
			return err
		}
		l.procs = append(l.procs, p)
		go func() {
			<-p.Exited()
			exited <- p.exitError()
		}()
	}
	l.Endpoints = grpcAddrs
	admin, err := DialAdmin(grpcAddrs)
	if err != nil {
		return err
	}
	defer admin.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err = admin.WaitLeader(ctx, exited)
	return err
}

// Stop stops every process l started, by PID: SIGTERM to all at once (a
// node stops gracefully, handing leadership over), then up to 10 seconds
// for them to exit before SIGKILL. It returns an error naming any that had
// exited on their own before.
func (l *Local) Stop() error {
	var errs []error
	for _, p := range l.procs {
		select {
		case <-p.Exited():
			errs = append(errs, p.exitError())
		default:
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, p := range l.procs {
		p.Stop(10 * time.Second)
	}
	l.procs = nil
	return errors.Join(errs...)
}
