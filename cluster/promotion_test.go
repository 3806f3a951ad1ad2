package cluster

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// TestReaddedNodeWaitsStabilization: a voter that lost its state and came
// back empty under its id is removed and added again as a non-voter; it is
// promoted only after it has been healthy for the stabilization time, counted
// from when it could be healthy at all (its vote gate opened: until then it
// reports itself fresh, which is unhealthy), as a new node is.
func TestReaddedNodeWaitsStabilization(t *testing.T) {
	const stabilization = 3 * time.Second
	g, nodes := bootstrapThree(t, func(c *Config) { c.Gossip.StabilizationTime = stabilization })
	g.waitVoters(opWait, "n1", "n2", "n3")
	cfg := g.wipeAFollower(nodes)
	back, err := g.open(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	var added, opened, promoted time.Time
	deadline := time.Now().Add(opWait + 2*stabilization)
	for promoted.IsZero() {
		if time.Now().After(deadline) {
			t.Fatalf("not promoted again by the deadline (added %v, gate opened %v)", !added.IsZero(), !opened.IsZero())
		}
		s, ok := suffrages(t, g.leader())[back.ID()]
		now := time.Now()
		switch {
		case ok && s == raft.Nonvoter && added.IsZero():
			added = now
		case ok && s == raft.Voter && !added.IsZero():
			promoted = now
		}
		if opened.IsZero() && back.mem.gate.open.Load() {
			opened = now
		}
		time.Sleep(20 * time.Millisecond) // polling a condition with a deadline
	}
	t.Logf("re-added as a non-voter; gate opened %v after, promoted %v after (stabilization %v)",
		opened.Sub(added).Round(time.Millisecond), promoted.Sub(added).Round(time.Millisecond), stabilization)
	if d := promoted.Sub(opened); opened.IsZero() || d < stabilization {
		t.Errorf("promoted %v after its vote gate opened, want at least the stabilization time %v", d.Round(time.Millisecond), stabilization)
	}
}
