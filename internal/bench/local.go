package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/leasehold/leasehold/internal/bench/redislua"
	"github.com/leasehold/leasehold/internal/loopback"
	"github.com/leasehold/leasehold/internal/proc"
)

// Local is a private Redis and a private Leasehold cluster on loopback,
// with their data and logs under Dir. Their processes are package proc's;
// Stop stops every process it started, by PID.
type Local struct {
	Dir       string
	RedisAddr string
	Endpoints []string
	redis     *proc.Process
	cluster   *proc.Cluster
}

// Procs returns the processes started so far: redis-server, then the nodes.
func (l *Local) Procs() []*proc.Process {
	var out []*proc.Process
	if l.redis != nil {
		out = append(out, l.redis)
	}
	if l.cluster != nil {
		for _, n := range l.cluster.Nodes() {
			out = append(out, n.Process)
		}
	}
	return out
}

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
	p := proc.New("redis-server", path, []string{
		"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning",
	}, proc.Options{Log: filepath.Join(l.Dir, "redis.log")})
	if err := p.Start(); err != nil {
		return err
	}
	l.redis = p
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
			e, _ := p.LastExit()
			return &proc.ExitError{Exit: e}
		case <-ctx.Done():
			return fmt.Errorf("redis-server on %s did not answer PING: %w (last: %v)", l.RedisAddr, ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// StartCluster starts n `leasehold serve` nodes (the binary at path) on
// free loopback ports, with data and logs under l.Dir, and waits for a
// leader, at most 30 seconds, or until a node exits.
func (l *Local) StartCluster(ctx context.Context, path string, n int) error {
	specs, err := proc.Layout{Nodes: n, Dir: l.Dir, LogLevel: "warn"}.Specs()
	if err != nil {
		return err
	}
	c, err := proc.NewCluster(proc.ClusterConfig{Binary: path, Nodes: specs})
	if err != nil {
		return err
	}
	l.cluster = c
	l.Endpoints = c.Endpoints()
	if err := c.Start(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err = c.WaitLeader(ctx)
	return err
}

// Stop stops every process l started, by PID: SIGTERM to all at once (a
// node stops gracefully, handing leadership over), then up to 10 seconds
// for them to exit before SIGKILL. It returns an error naming any that had
// exited on their own before.
func (l *Local) Stop() error {
	var errs []error
	procs := l.Procs()
	for _, p := range procs {
		for _, e := range p.UnexpectedExits() {
			errs = append(errs, &proc.ExitError{Exit: e})
		}
	}
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Go(func() { _ = p.Stop(10 * time.Second) })
	}
	wg.Wait()
	if l.cluster != nil {
		_ = l.cluster.Close()
	}
	l.redis, l.cluster = nil, nil
	return errors.Join(errs...)
}
