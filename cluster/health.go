package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

const (
	// probeFile is the file the disk check writes, fsyncs and removes.
	probeFile = "disk-check.tmp"
	// probeBytes is how much the disk check writes: one bbolt page.
	probeBytes = 4096
	// readyMaxApplyLag is how many committed entries a ready node may
	// have left to apply.
	readyMaxApplyLag = 64
	// diskCheckStaleAfter is how many DiskCheckIntervals may pass without
	// a disk check finishing before the node is not ready.
	diskCheckStaleAfter = 3
)

// diskState is the last disk check's outcome.
type diskCheck struct {
	mu struct {
		sync.Mutex
		err error
		at  time.Time // zero: not checked yet
	}
}

// Health is a node's view of whether it can serve (Ready), for load
// balancers, probes and the console.
type Health struct {
	ID       string
	State    string // leader, follower, candidate, shutdown or removed
	LeaderID string // "" while no leader is known
	// Voter is whether this node votes in the latest Raft configuration
	// it knows (committed or not); false for a non-voter and for a node
	// the configuration does not name.
	Voter bool
	Term  uint64
	// AppliedIndex and CommitIndex are this node's; a follower's commit
	// index trails the leader's by what it has not yet stored.
	AppliedIndex, CommitIndex uint64
	// LastContact is how long ago a follower last heard from the leader;
	// 0 on a leader.
	LastContact time.Duration
	// DiskErr is the last disk check's error, nil if it succeeded;
	// DiskChecked is when it ran (zero before the first).
	DiskErr     error
	DiskChecked time.Time
	// Problems says why the node is not ready; empty when it is.
	Problems []string
}

// Ready reports whether the node is ready: it knows a leader, is caught up
// (a leader: ready to stamp time, after its post-election barrier; a
// follower: it heard from the leader within twice HeartbeatTimeout and has
// applied all but readyMaxApplyLag of the entries it knows committed), and
// its last disk check (a small file written and fsynced in Dir every
// DiskCheckInterval) succeeded. The error says what is missing.
func (h Health) Ready() error {
	if len(h.Problems) == 0 {
		return nil
	}
	return errors.New(strings.Join(h.Problems, "; "))
}

// Health returns the node's health now. It reads local state only.
func (n *Node) Health() Health {
	leaderID, _ := n.Leader()
	h := Health{
		ID:           n.cfg.ID,
		State:        n.raftState(),
		LeaderID:     leaderID,
		Voter:        n.isVoter(),
		Term:         n.raft.CurrentTerm(),
		AppliedIndex: n.raft.AppliedIndex(),
		CommitIndex:  n.raft.CommitIndex(),
	}
	n.disk.mu.Lock()
	h.DiskErr, h.DiskChecked = n.disk.mu.err, n.disk.mu.at
	n.disk.mu.Unlock()

	if leaderID == "" {
		h.Problems = append(h.Problems, "no leader is known")
	}
	switch state := n.raft.State(); {
	case n.Removed():
		h.Problems = append(h.Problems, "removed from the cluster's configuration: it takes no part any more")
	case state == raft.Leader:
		n.clock.Lock()
		ready := n.readyLocked()
		n.clock.Unlock()
		if !ready {
			h.Problems = append(h.Problems, "the new leader is not ready yet (its barrier has not applied)")
		}
	case state == raft.Follower:
		if last := n.raft.LastContact(); !last.IsZero() {
			h.LastContact = time.Since(last)
		}
		if leaderID != "" && (h.LastContact == 0 || h.LastContact > 2*n.cfg.HeartbeatTimeout) {
			h.Problems = append(h.Problems, fmt.Sprintf("not heard from the leader for %v", h.LastContact.Round(time.Millisecond)))
		}
	default:
		h.Problems = append(h.Problems, "raft state is "+h.State)
	}
	if lag := int64(h.CommitIndex) - int64(h.AppliedIndex); lag > readyMaxApplyLag {
		h.Problems = append(h.Problems, fmt.Sprintf("%d committed entries not yet applied", lag))
	}
	switch {
	case h.DiskErr != nil:
		h.Problems = append(h.Problems, "disk check failed: "+h.DiskErr.Error())
	case h.DiskChecked.IsZero():
		h.Problems = append(h.Problems, "disk not checked yet")
	case time.Since(h.DiskChecked) > diskCheckStaleAfter*n.cfg.DiskCheckInterval:
		// A dying disk more often stalls than fails: the check's write or
		// fsync does not return, and its last outcome would read as a
		// success for ever (TestReadinessFailsWhileTheDiskHangs).
		h.Problems = append(h.Problems, fmt.Sprintf("disk check has not finished for %v: a write or fsync in %s hangs",
			time.Since(h.DiskChecked).Round(time.Millisecond), n.cfg.Dir))
	}
	return h
}

// Ready is Health().Ready().
func (n *Node) Ready() error { return n.Health().Ready() }

// checkDisk runs one disk check and records its outcome.
func (n *Node) checkDisk() {
	start := time.Now()
	err := n.cfg.diskWrite(n.cfg.Dir)
	n.metrics.observe(func(m *nodeMetrics) prometheus.Histogram { return m.diskProbe }, time.Since(start))
	if n.metrics != nil {
		if err != nil {
			n.metrics.diskProbeError.Inc()
			n.metrics.diskOK.Set(0)
		} else {
			n.metrics.diskOK.Set(1)
		}
	}
	n.disk.mu.Lock()
	was := n.disk.mu.err
	n.disk.mu.err, n.disk.mu.at = err, time.Now()
	n.disk.mu.Unlock()
	switch {
	case err != nil && was == nil:
		n.log.Error("disk check failed: the node reports not ready until a check succeeds", "dir", n.cfg.Dir, "err", err)
	case err == nil && was != nil:
		n.log.Info("disk check succeeded again", "dir", n.cfg.Dir)
	}
}

// writeProbe writes probeBytes to a new file in dir, fsyncs and removes
// it: what a Raft log write needs from the disk. A full disk fails it.
func writeProbe(dir string) error {
	path := filepath.Join(dir, probeFile)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(make([]byte, probeBytes))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if rerr := os.Remove(path); err == nil && rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = rerr
	}
	return err
}

// housekeeping runs the disk checks, every DiskCheckInterval from the
// start, and ages the per-key activity every second, until Close.
func (n *Node) housekeeping() {
	defer n.wg.Done()
	n.checkDisk()
	disk := time.NewTicker(n.cfg.DiskCheckInterval)
	defer disk.Stop()
	age := time.NewTicker(time.Second)
	defer age.Stop()
	last := time.Now()
	for {
		select {
		case <-n.stop:
			return
		case <-disk.C:
			n.checkDisk()
		case now := <-age.C:
			n.activity.decay(now.Sub(last))
			last = now
		}
	}
}
