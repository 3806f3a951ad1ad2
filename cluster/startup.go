package cluster

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/hashicorp/raft"
)

// prepareState decides, from what the data directory holds, how raft
// starts, and does what that takes before raft.NewRaft:
//
//   - a term on disk: resume it (Replace is ignored), once the log and the
//     snapshots are checked to fit together;
//   - no term, but a log, snapshots or the marker file: the state was lost
//     (raft.db truncated, replaced or deleted). Refuse, with ErrStateLost:
//     resuming without the term and vote could vote twice in one term, and
//     bootstrapping again would do that and rewrite the configuration. With
//     Replace and only the marker left, start empty;
//   - nothing at all, and Replace: start empty, never bootstrap;
//   - nothing at all: probe the peers. If one has moved past its bootstrap,
//     a cluster exists that names this node, which either lost its state or
//     was started after the others elected a leader: refuse, with
//     ErrStateLost. Otherwise bootstrap with Peers, as every node of a new
//     cluster does.
//
// A node whose directory has state gets the marker file (once), as does one
// that bootstraps or starts as a replacement; so a node never bootstraps
// twice. DESIGN.md ("Storage and start-up") says why, and what an operator
// does on each refusal.
//
// With Config.Gossip and no static Peers, an empty directory is decided by
// gossip instead of a probe (membership.prepareEmpty): bootstrap when
// BootstrapExpect fresh nodes have met, else start empty and wait to be
// added. fresh reports whether the node starts empty to be added by a
// leader (a join or a replacement), which it gossips.
func (n *Node) prepareState(ctx context.Context, disk diskState, rc *raft.Config, snaps raft.SnapshotStore, trans raftTransport) (fresh bool, err error) {
	err = n.prepareStateOf(ctx, disk, rc, snaps, trans, &fresh)
	return fresh, err
}

func (n *Node) prepareStateOf(ctx context.Context, disk diskState, rc *raft.Config, snaps raft.SnapshotStore, trans raftTransport, fresh *bool) error {
	dir, id := n.cfg.Dir, n.cfg.ID
	dbPath := filepath.Join(dir, storeFile)
	const remedyLost = "if this node never ran, start it as a fresh replacement (serve --replace); " +
		"if it lost its state, start it as a fresh replacement once the cluster has a leader; " + noOldCopy
	switch {
	case disk.hasState():
		if n.cfg.Replace {
			n.log.Warn("Replace ignored: the data directory holds Raft state, which the node resumes", "dir", dir)
		}
		if err := checkLogCovered(dir, disk); err != nil {
			return err
		}
		if hasGateFile(dir) {
			// Stopped before its vote gate opened: its log is a leader's
			// in part only.
			*fresh = true
			n.log.Warn("this node started fresh and stopped before it had caught up: it grants no vote until it has",
				"dir", dir)
		}
		if !disk.marker {
			return writeMarker(dir, id)
		}
		return nil

	case disk.last > 0 || len(disk.snapshots) > 0:
		return &StateError{Kind: ErrStateLost, Path: dbPath,
			Problem: fmt.Sprintf("holds no term or vote, but the data directory holds %s: raft.db was lost or replaced, "+
				"and resuming without its term and vote could vote twice in one term", disk.leftovers()),
			Remedy: "remove the data directory " + dir + " and start the node as a fresh replacement " +
				"(serve --replace) once the cluster has a leader; " + noOldCopy}

	case disk.marker && !n.cfg.Replace:
		return &StateError{Kind: ErrStateLost, Path: dbPath,
			Problem: "holds no Raft state (no term, no log) although this node ran here before (" + markerFile + "): " +
				"raft.db was truncated, replaced or deleted, and with it the node's term and vote",
			Remedy: remedyLost}

	case n.cfg.Replace:
		*fresh = true
		n.log.Warn("starting with no Raft state as a fresh replacement: not bootstrapping; "+
			"the leader of the cluster that names this node will send it the log", "dir", dir)
		if err := writeGateFile(dir); err != nil {
			return err
		}
		return writeMarker(dir, id)
	}

	if n.mem != nil && len(n.cfg.Peers) == 0 {
		err := n.mem.prepareEmpty(ctx, rc, snaps, trans)
		*fresh = n.mem.g != nil && n.mem.g.meta.Load().Fresh
		if err == nil && *fresh {
			err = writeGateFile(dir)
		}
		return err
	}

	// An empty directory: a new cluster, unless the peers say otherwise.
	// The probe dials as raft would: over mutual TLS, naming the peer's
	// id, when the node's transport does.
	dial, provider, target := n.raftDialer()
	stop := answerAsEmpty(trans)
	states := probePeers(Peer{ID: id, RaftAddr: n.advertise}, n.cfg.Peers, provider, target,
		dial, n.cfg.ProbeTimeout, newHCLog(n.log, "probe"))
	stop()
	for _, st := range states {
		if st.formed() {
			return &StateError{Kind: ErrStateLost, Path: dir,
				Problem: "holds no Raft state, but this node's peers already form a cluster (" + describePeers(states) + "): " +
					"this node lost its state, or is new and was started after the others elected a leader",
				Remedy: remedyLost}
		}
	}
	if len(states) > 0 {
		n.log.Info("no Raft state here and no cluster among the peers: bootstrapping", "peers", describePeers(states))
	}
	servers := make([]raft.Server, len(n.cfg.Peers))
	for i, p := range n.cfg.Peers {
		servers[i] = raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.RaftAddr)}
	}
	if err := raft.BootstrapCluster(rc, n.logs, n.store, snaps, trans, raft.Configuration{Servers: servers}); err != nil {
		return fmt.Errorf("bootstrap cluster: %w", err)
	}
	n.log.Info("bootstrapped a new cluster", "peers", len(servers))
	return writeMarker(dir, id)
}

// addrProvider returns Config.DialAddrs as raft's ServerAddressProvider, or
// nil when there are none (raft then dials configured addresses).
func (n *Node) addrProvider() raft.ServerAddressProvider {
	if len(n.cfg.DialAddrs) == 0 {
		return nil
	}
	return dialAddrs(n.cfg.DialAddrs)
}
