//go:build unix

package jepsen

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/leasehold/leasehold/internal/chaosclock"
	"github.com/leasehold/leasehold/internal/proc"
)

// The run's processes are package proc's: nodes (proc.Node) and client
// workers (proc.Process), each in its own process group, signalled only by
// the PID the harness started, with its exits recorded (an exit the harness
// did not cause fails the "crashes" check). What is the chaos harness's own
// is here: the proxies every node dials its peers through, and each
// process's clock knob file.

// cluster is the set of node processes under test, all on loopback. It is
// safe for concurrent use.
type cluster struct {
	*proc.Cluster
}

// newCluster prepares n nodes (n1..nN, and chaosSpares spare slots after
// them) of binary bin, with their data under
// dir/data and their logs in dir, on free loopback ports; it starts none of
// them. Each node reaches each peer through its own link of nw
// (--raft-dial), and reads its clock knob's control file (clockPath). The
// nodes serve mutual TLS with certificates in dir/data/tls (the cluster's
// Certs issue the workers' too), unless insecure.
func newCluster(dir, bin string, n int, logLevel string, nw *network, insecure bool) (*cluster, error) {
	// Membership on, as in a real deployment: the nodes gossip and
	// bootstrap with --bootstrap-expect, and chaosSpares more slots are
	// prepared for the membership faults' fresh nodes (which leave
	// gracefully on SIGTERM).
	l := proc.Layout{Nodes: n, Dir: filepath.Join(dir, "data"), LogDir: dir, LogLevel: logLevel, Insecure: insecure,
		Gossip: true, Spares: chaosSpares, ExtraArgs: func(s proc.NodeSpec) []string {
			args := []string{"--dead-server-timeout", chaosDeadServerTimeout.String(),
				"--server-stabilization-time", chaosStabilization.String()}
			if s.BootstrapExpect == 0 {
				args = append(args, "--leave-on-terminate")
			}
			return args
		}}
	specs, err := l.Specs()
	if err != nil {
		return nil, err
	}
	certs, err := l.Certs()
	if err != nil {
		return nil, err
	}
	for i := range specs {
		s := &specs[i]
		for _, peer := range specs {
			if peer.ID == s.ID {
				continue
			}
			l, err := nw.add(s.ID, peer.ID, peer.RaftAddr)
			if err != nil {
				return nil, err
			}
			s.RaftDial = append(s.RaftDial, proc.Peer{ID: peer.ID, Addr: l.addr()})
		}
		if s.Options, err = withClockKnob(s.Options, clockPath(dir, s.ID)); err != nil {
			return nil, err
		}
	}
	c, err := proc.NewCluster(proc.ClusterConfig{Binary: bin, Nodes: specs, Certs: certs, Insecure: l.Insecure})
	if err != nil {
		return nil, err
	}
	return &cluster{c}, nil
}

// leader returns the id of the node that says it leads in the highest term,
// or "" if none does; each node is asked for at most 500ms.
func (c *cluster) leader(ctx context.Context) string {
	st, err := c.Admin().Leader(ctx, 500*time.Millisecond)
	if err != nil {
		return ""
	}
	return st.Name
}

// waitLeader polls until a node leads, at most limit, and returns its id.
func (c *cluster) waitLeader(ctx context.Context, limit time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	nd, err := c.WaitLeader(ctx)
	if err != nil {
		return "", fmt.Errorf("no leader within %v: %w", limit, err)
	}
	return nd.ID(), nil
}

// clockPath is the clock knob control file of the process named name (a
// node id or a worker's name) in the run directory dir.
func clockPath(dir, name string) string { return filepath.Join(dir, "clock-"+name) }

// withClockKnob returns opts for a process whose clock knob reads the
// control file path: it writes the file (no fault), points the process at
// it, and removes the old acknowledgement before each start, since the new
// process acknowledges once its knob listens and an old ack would promise
// that too early.
func withClockKnob(opts proc.Options, path string) (proc.Options, error) {
	if err := chaosclock.WriteControl(path, chaosclock.Control{}); err != nil {
		return opts, err
	}
	opts.Env = append(opts.Env, chaosclock.EnvVar+"="+path)
	opts.BeforeStart = func() error {
		if err := os.Remove(chaosclock.AckPath(path)); err != nil && !os.IsNotExist(err) {
			return err
		}
		return nil
	}
	return opts, nil
}
