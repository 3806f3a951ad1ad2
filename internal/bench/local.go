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

// Local is a private Redis and private Leasehold clusters on loopback, with
// their data, logs and certificates under Dir: one serving mutual TLS, as
// a cluster should, and, to measure what TLS costs, one in plain text. Their
// processes are package proc's; Stop stops every process it started, by
// PID.
type Local struct {
	Dir       string
	RedisAddr string
	// Endpoints are the TLS cluster's client API addresses, and TLS the
	// operator certificate to drive it with (it sets the keys' limits).
	Endpoints []string
	TLS       *TLSFiles
	// PlainEndpoints are the plain-text cluster's (StartPlainCluster).
	PlainEndpoints []string
	redis          *proc.Process
	cluster        *proc.Cluster
	plain          *proc.Cluster
}

// Procs returns the processes started so far: redis-server, then the nodes.
func (l *Local) Procs() []*proc.Process {
	var out []*proc.Process
	if l.redis != nil {
		out = append(out, l.redis)
	}
	for _, c := range []*proc.Cluster{l.cluster, l.plain} {
		if c != nil {
			for _, n := range c.Nodes() {
				out = append(out, n.Process)
			}
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
// free loopback ports, serving mutual TLS with certificates made in
// l.Dir/tls, with data and logs under l.Dir, and waits for a leader, at
// most 30 seconds, or until a node exits. It sets Endpoints and TLS.
func (l *Local) StartCluster(ctx context.Context, path string, n int) error {
	layout := proc.Layout{Nodes: n, Dir: l.Dir, LogLevel: "warn"}
	certs, err := layout.Certs()
	if err != nil {
		return err
	}
	admin, err := certs.Operator(proc.AdminName)
	if err != nil {
		return err
	}
	l.TLS = &admin
	l.cluster, err = startCluster(ctx, path, layout, certs)
	if l.cluster != nil {
		l.Endpoints = l.cluster.Endpoints()
	}
	return err
}

// StartPlainCluster starts a second cluster of n nodes like StartCluster's
// but in plain text (serve --insecure), under l.Dir/plain: the baseline of
// what TLS costs. It sets PlainEndpoints.
func (l *Local) StartPlainCluster(ctx context.Context, path string, n int) error {
	var err error
	l.plain, err = startCluster(ctx, path, proc.Layout{Nodes: n, Dir: filepath.Join(l.Dir, "plain"), LogLevel: "warn", Insecure: true}, nil)
	if l.plain != nil {
		l.PlainEndpoints = l.plain.Endpoints()
	}
	return err
}

// startCluster starts layout's nodes, whose CA is certs (nil: plain text),
// and waits for a leader as StartCluster says. The cluster it returns, if
// any, holds processes to stop, also with an error.
func startCluster(ctx context.Context, path string, layout proc.Layout, certs *proc.Certs) (*proc.Cluster, error) {
	specs, err := layout.Specs()
	if err != nil {
		return nil, err
	}
	c, err := proc.NewCluster(proc.ClusterConfig{Binary: path, Nodes: specs, Certs: certs})
	if err != nil {
		return nil, err
	}
	if err := c.Start(); err != nil {
		return c, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err = c.WaitLeader(ctx)
	return c, err
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
	for _, c := range []*proc.Cluster{l.cluster, l.plain} {
		if c != nil {
			_ = c.Close()
		}
	}
	l.redis, l.cluster, l.plain = nil, nil, nil
	return errors.Join(errs...)
}
