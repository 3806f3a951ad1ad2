package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/leasehold/leasehold/internal/bench/redislua"
	"github.com/leasehold/leasehold/internal/loopback"
	"github.com/leasehold/leasehold/internal/proc"
)

// Local is private Redis servers and private Leasehold clusters on
// loopback, with their data, logs and certificates under Dir: a Redis
// without persistence; the durable ones (StartRedisDurable), one with an
// append-only file fsynced on every write and a primary with a replica,
// both so; a cluster serving mutual TLS, as a cluster should, and, to
// measure what TLS costs, one in plain text. Their processes are package
// proc's; Stop stops every process it started, by PID.
type Local struct {
	Dir       string
	RedisAddr string
	// RedisAOFAddr is a Redis whose append-only file is fsynced before
	// every reply (appendfsync always); RedisReplicatedAddr a primary
	// configured so, with a replica configured so too
	// (StartRedisDurable). Call RunRedisOn(RedisReplicated(...)) to WAIT
	// for the replica after every call.
	RedisAOFAddr        string
	RedisReplicatedAddr string
	// Endpoints are the TLS cluster's client API addresses, and TLS the
	// operator certificate to drive it with (it sets the keys' limits).
	Endpoints []string
	TLS       *TLSFiles
	// PlainEndpoints are the plain-text cluster's (StartPlainCluster).
	PlainEndpoints []string
	redis          *proc.Process
	redisDurable   []*proc.Process // AOF, primary, replica
	cluster        *proc.Cluster
	plain          *proc.Cluster
}

// Procs returns the processes started so far: redis-server, then the nodes.
func (l *Local) Procs() []*proc.Process {
	var out []*proc.Process
	if l.redis != nil {
		out = append(out, l.redis)
	}
	out = append(out, l.redisDurable...)
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
	p, addr, err := l.startRedis(ctx, path, "redis", "--appendonly", "no")
	if p != nil {
		l.redis = p
	}
	l.RedisAddr = addr
	return err
}

// StartRedisDurable starts the durable Redis peers of a Raft commit, each
// redis-server (the binary at path) on a free loopback port with its
// directory under l.Dir, and waits until each answers PING and the replica
// has caught up with its primary:
//
//   - RedisAOFAddr: an append-only file fsynced before every reply
//     (appendonly yes, appendfsync always), no RDB snapshots;
//   - RedisReplicatedAddr: a primary configured so, and a replica of it
//     configured so too, as a Raft write is on a quorum's disks.
func (l *Local) StartRedisDurable(ctx context.Context, path string) error {
	aof := []string{"--appendonly", "yes", "--appendfsync", "always"}
	p, addr, err := l.startRedis(ctx, path, "redis-aof", aof...)
	if p != nil {
		l.redisDurable = append(l.redisDurable, p)
	}
	if err != nil {
		return err
	}
	l.RedisAOFAddr = addr
	p, primary, err := l.startRedis(ctx, path, "redis-primary", aof...)
	if p != nil {
		l.redisDurable = append(l.redisDurable, p)
	}
	if err != nil {
		return err
	}
	host, port, err := net.SplitHostPort(primary)
	if err != nil {
		return err
	}
	p, _, err = l.startRedis(ctx, path, "redis-replica", append(aof, "--replicaof", host, port)...)
	if p != nil {
		l.redisDurable = append(l.redisDurable, p)
	}
	if err != nil {
		return err
	}
	if err := waitReplica(ctx, primary); err != nil {
		return err
	}
	l.RedisReplicatedAddr = primary
	return nil
}

// waitReplica waits, at most 30 seconds, until the primary at addr has a
// replica that acknowledges its writes: WAIT 1 answers 1.
func waitReplica(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := redislua.Dial(ctx, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	var last any
	for {
		if _, err := c.Do("SET", "leasehold:bench:replica-check", "1"); err != nil {
			return fmt.Errorf("redis primary %s: %w", addr, err)
		}
		v, err := c.Do("WAIT", "1", "200")
		if err != nil {
			return fmt.Errorf("redis primary %s: wait for its replica: %w", addr, err)
		}
		if n, ok := v.(int64); ok && n >= 1 {
			return nil
		}
		last = v
		if ctx.Err() != nil {
			return fmt.Errorf("redis primary %s: no replica acknowledged a write (WAIT 1 answered %v): %w", addr, last, ctx.Err())
		}
	}
}

// startRedis starts one redis-server named name on a free loopback port,
// with no RDB snapshots and the extra arguments args, its directory
// l.Dir/name and its log l.Dir/name.log, and waits until it answers PING. A
// process it returns has been started, also with an error: Stop stops it.
func (l *Local) startRedis(ctx context.Context, path, name string, args ...string) (*proc.Process, string, error) {
	ports, err := loopback.StablePorts(1)
	if err != nil {
		return nil, "", err
	}
	dir := filepath.Join(l.Dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", err
	}
	port := strconv.Itoa(ports[0])
	p := proc.New(name, path, append([]string{
		"--port", port, "--bind", "127.0.0.1", "--save", "",
		"--dir", dir, "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning",
	}, args...), proc.Options{Log: filepath.Join(l.Dir, name+".log")})
	if err := p.Start(); err != nil {
		return nil, "", err
	}
	addr := "127.0.0.1:" + port

	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		err := redislua.Ping(pctx, addr)
		pcancel()
		if err == nil {
			return p, addr, nil
		}
		select {
		case <-p.Exited():
			e, _ := p.LastExit()
			return p, addr, &proc.ExitError{Exit: e}
		case <-ctx.Done():
			return p, addr, fmt.Errorf("%s on %s did not answer PING: %w (last: %v)", name, addr, ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// StartCluster starts n `leasehold serve` nodes (the binary at path) on
// free loopback ports, serving mutual TLS with certificates made in
// l.Dir/tls, with data and logs under l.Dir, and waits for a leader, at
// most 30 seconds, or until a node exits. It sets Endpoints and TLS.
func (l *Local) StartCluster(ctx context.Context, path string, n int) error {
	// Gossip: the nodes bootstrap once all have met (--bootstrap-expect),
	// so one that starts late on a loaded machine is not refused as a
	// static --peers node started after the others elected a leader is.
	layout := proc.Layout{Nodes: n, Dir: l.Dir, LogLevel: "warn", Gossip: true}
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
	l.plain, err = startCluster(ctx, path, proc.Layout{Nodes: n, Dir: filepath.Join(l.Dir, "plain"), LogLevel: "warn", Insecure: true, Gossip: true}, nil)
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
	c, err := proc.NewCluster(proc.ClusterConfig{Binary: path, Nodes: specs, Certs: certs, Insecure: layout.Insecure})
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
	l.redis, l.redisDurable, l.cluster, l.plain = nil, nil, nil, nil
	return errors.Join(errs...)
}
