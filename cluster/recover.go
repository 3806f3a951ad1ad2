package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/raft"
)

// peersFile is the outage-recovery file an operator writes into a data
// directory, as Consul and Nomad read it: a JSON list of
// {"id", "address", "non_voter"}, the servers the cluster is to have.
const peersFile = "peers.json"

// recoveredSuffix is appended to peers.json once it has been applied, so a
// later start does not apply it again (and the operator sees it was used).
const recoveredSuffix = ".recovered"

// recoverPeers applies dir/peers.json, if there is one, before raft
// starts: raft.RecoverCluster rewrites the node's configuration to the
// servers listed, as a new log entry on top of its state, so that a cluster
// that lost its quorum for good can elect again from the nodes left (README,
// "Recover from a lost quorum"). Every surviving node must get the same
// file. A directory with no Raft state cannot be recovered. The file is
// renamed peers.json.recovered once applied, and a removed marker is
// cleared (the operator names this node a member again).
func (n *Node) recoverPeers(rc *raft.Config, snaps raft.SnapshotStore, trans raft.Transport, disk diskState) error {
	path := filepath.Join(n.cfg.Dir, peersFile)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("peers.json: %w", err)
	}
	if !disk.hasState() {
		return &StateError{Kind: ErrCorruptState, Path: path,
			Problem: "asks for an outage recovery, but this data directory holds no Raft state to recover",
			Remedy:  "remove " + path + " and start the node empty, to join as a new member"}
	}
	cfg, err := raft.ReadConfigJSON(path)
	if err != nil {
		return &StateError{Kind: ErrCorruptState, Path: path, Problem: "does not read as a peers.json (" + err.Error() + ")",
			Remedy: `write a JSON list such as [{"id": "n1", "address": "10.0.0.1:7201", "non_voter": false}]`}
	}
	var ids []string
	self := false
	for _, s := range cfg.Servers {
		ids = append(ids, string(s.ID))
		self = self || string(s.ID) == n.cfg.ID
	}
	if !self {
		return &StateError{Kind: ErrCorruptState, Path: path,
			Problem: fmt.Sprintf("lists %s but not this node (%q)", strings.Join(ids, ", "), n.cfg.ID),
			Remedy:  "list every surviving server, this one included, in the same peers.json on each of them"}
	}
	if err := raft.RecoverCluster(rc, newMachineFSM(nil, nil), n.store, n.store, snaps, trans, cfg); err != nil {
		return fmt.Errorf("recover the cluster from %s: %w", path, err)
	}
	if err := os.Rename(path, path+recoveredSuffix); err != nil {
		return fmt.Errorf("peers.json applied, but: %w", err)
	}
	if err := os.Remove(filepath.Join(n.cfg.Dir, removedFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	n.log.Warn("recovered the cluster's configuration from peers.json (outage recovery)", "servers", ids,
		"renamed_to", path+recoveredSuffix)
	return nil
}

// checkRemoved refuses a data directory whose node was removed from its
// cluster (the marker membership.becomeRemoved writes).
func checkRemoved(dir string) error {
	path := filepath.Join(dir, removedFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return &StateError{Kind: ErrRemoved, Path: path,
		Problem: "says this node was removed from its cluster (" + strings.TrimSpace(string(b)) + ")",
		Remedy: "to bring the machine back, remove the data directory " + dir + " and start it again: it joins as a new " +
			"member (under the id --id or its TLS certificate names, else a new one); or, in an outage recovery, name it in a peers.json"}
}
