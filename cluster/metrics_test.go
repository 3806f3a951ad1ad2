package cluster

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gometrics "github.com/hashicorp/go-metrics/compat"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/leasehold/leasehold/fsm"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// metricValue returns the value of the series name{labels} in reg (a
// counter's or gauge's value, a histogram's or summary's count and sum),
// and whether it exists.
func metricValue(t testing.TB, reg prometheus.Gatherer, name string, labels map[string]string) (v, sum float64, ok bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for k, want := range labels {
				if got[k] != want {
					continue next
				}
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				return m.GetCounter().GetValue(), 0, true
			case dto.MetricType_GAUGE:
				return m.GetGauge().GetValue(), 0, true
			case dto.MetricType_HISTOGRAM:
				return float64(m.GetHistogram().GetSampleCount()), m.GetHistogram().GetSampleSum(), true
			case dto.MetricType_SUMMARY:
				return float64(m.GetSummary().GetSampleCount()), m.GetSummary().GetSampleSum(), true
			}
		}
	}
	return 0, 0, false
}

// perNodeRegistries gives each node of a test cluster its own registry.
type perNodeRegistries struct {
	mu   sync.Mutex
	regs map[string]*prometheus.Registry
}

func (p *perNodeRegistries) option(c *Config) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.regs == nil {
		p.regs = map[string]*prometheus.Registry{}
	}
	r := prometheus.NewRegistry()
	p.regs[c.ID] = r
	c.Metrics = r
}

func (p *perNodeRegistries) of(id string) *prometheus.Registry {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.regs[id]
}

// waitApplied waits until every running node has applied the leader's
// last index.
func (c *testCluster) waitApplied() {
	c.t.Helper()
	want := c.leader().raft.AppliedIndex()
	waitFor(c.t, opWait, "every node caught up", func() bool {
		for _, n := range c.nodes {
			if n != nil && n.raft.AppliedIndex() < want {
				return false
			}
		}
		return true
	})
}

func TestMetricsCountWhatEveryNodeApplies(t *testing.T) {
	var regs perNodeRegistries
	c := newTestCluster(t, 3, regs.option)
	key := "tenant-1:gpt-4.1"
	c.setLimit(key, hourly(10))
	// Central: 4 grants of 2, then a denial (2 tokens left, 3 asked).
	for i := range 4 {
		if r := c.acquire(take("a", uint64(i+1), key, 2, 0)); !r.Allowed {
			t.Fatalf("central acquire %d denied", i)
		}
	}
	if r := c.acquire(take("a", 5, key, 3, 0)); r.Allowed {
		t.Fatal("acquire over the limit allowed")
	}
	// A lease of 2, and 1 of it given back.
	lease := c.acquire(take("b", 1, key, 2, time.Minute))
	if !lease.Allowed {
		t.Fatal("lease denied")
	}
	c.release(&pb.ReleaseRequest{ClientId: []byte("b"), Seq: 2, LeaseId: lease.LeaseId, Unused: []int64{1}})
	c.waitApplied()

	for _, n := range c.nodes {
		reg := regs.of(n.ID())
		for _, want := range []struct {
			name   string
			labels map[string]string
			v      float64
		}{
			{"leasehold_decisions_total", map[string]string{"mode": "central", "result": "granted"}, 4},
			{"leasehold_decisions_total", map[string]string{"mode": "central", "result": "denied"}, 1},
			{"leasehold_decisions_total", map[string]string{"mode": "lease", "result": "granted"}, 1},
			{"leasehold_tokens_granted_total", map[string]string{"mode": "central"}, 8},
			{"leasehold_tokens_granted_total", map[string]string{"mode": "lease"}, 2},
			{"leasehold_tokens_released_total", nil, 1},
			{"leasehold_commands_applied_total", map[string]string{"command": "acquire", "status": "ok"}, 5},
			{"leasehold_commands_applied_total", map[string]string{"command": "acquire", "status": "denied"}, 1},
			{"leasehold_commands_applied_total", map[string]string{"command": "set_limit", "status": "ok"}, 1},
			{"leasehold_commands_applied_total", map[string]string{"command": "release", "status": "ok"}, 1},
			{"leasehold_keys", nil, 1},
			{"leasehold_leases", nil, 0},
			{"leasehold_sessions", nil, 2},
		} {
			got, _, ok := metricValue(t, reg, want.name, want.labels)
			if !ok || got != want.v {
				t.Errorf("%s: %s%v = %v (found %v); want %v", n.ID(), want.name, want.labels, got, ok, want.v)
			}
		}
		if got, _, _ := metricValue(t, reg, "leasehold_apply_seconds", nil); got < 1 {
			t.Errorf("%s: leasehold_apply_seconds has %v observations", n.ID(), got)
		}
		var a Activity
		waitFor(t, opWait, "the activity counted", func() bool { // run folds the keys behind apply
			a = n.Activity(10, "")
			return a.Admitted == 10 && a.Denied == 1
		})
		if len(a.Keys) != 1 || a.Keys[0].Key != key || a.Keys[0].Admitted != 10 || a.Keys[0].Denied != 1 {
			t.Errorf("%s: Activity = %+v; want %s with 10 admitted, 1 denied", n.ID(), a, key)
		}
		st := n.KeyStates([]string{key, "nope"})
		if !st[0].Found || !st[0].Pinned || st[0].Limit.Limit != 10 || st[1].Found {
			t.Errorf("%s: KeyStates = %+v", n.ID(), st)
		}
	}
	// The commit path's metrics are the proposing leader's. Summed over
	// the nodes: a loaded machine can elect another leader after the
	// writes, and the one asked at the end then had proposed nothing
	// (this failed under -race: "leader n3: leasehold_commit_seconds has
	// 0 observations").
	for _, name := range []string{"leasehold_commit_seconds", "leasehold_batch_commands", "leasehold_queue_seconds"} {
		var sum float64
		for _, n := range c.nodes {
			got, _, _ := metricValue(t, regs.of(n.ID()), name, nil)
			sum += got
		}
		if sum < 1 {
			t.Errorf("%s has %v observations on all nodes together", name, sum)
		}
	}
	waitFor(t, electionWait, "one node with leasehold_is_leader 1", func() bool {
		leaders := 0.0
		for _, n := range c.nodes {
			got, _, _ := metricValue(t, regs.of(n.ID()), "leasehold_is_leader", nil)
			leaders += got
		}
		return leaders == 1
	})
}

func TestKeyStatesCountLiveLeases(t *testing.T) {
	c := newTestCluster(t, 1)
	key := "k"
	c.setLimit(key, hourly(100))
	c.acquire(take("a", 1, key, 3, time.Minute))
	c.acquire(take("b", 1, key, 4, time.Minute))
	c.acquire(take("b", 2, key, 5, time.Minute))
	st := c.leader().KeyStates([]string{key})[0]
	if st.Lessees != 2 || st.Leases != 3 || st.Leased != 12 {
		t.Errorf("KeyStates = %+v; want 2 lessees, 3 leases, 12 tokens", st)
	}
}

// TestReadinessFollowsTheDisk: a node whose disk writes fail is not ready,
// says why, and counts the failure; it is ready again once they succeed.
func TestReadinessFollowsTheDisk(t *testing.T) {
	var regs perNodeRegistries
	var broken atomic.Bool
	c := newTestCluster(t, 3, regs.option, func(cfg *Config) {
		cfg.DiskCheckInterval = 20 * time.Millisecond
		if cfg.ID == "n2" {
			cfg.diskWrite = func(dir string) error {
				if broken.Load() {
					return errors.New("write " + dir + "/disk-check.tmp: no space left on device")
				}
				return writeProbe(dir)
			}
		}
	})
	c.leader()
	n2 := c.nodes[1]
	waitFor(t, opWait, "every node ready", func() bool {
		for _, n := range c.nodes {
			if n.Ready() != nil {
				return false
			}
		}
		return true
	})
	broken.Store(true)
	waitFor(t, opWait, "n2 not ready", func() bool { return n2.Ready() != nil })
	if err := n2.Ready(); !strings.Contains(err.Error(), "no space left on device") {
		t.Errorf("Ready() = %v; want the disk error", err)
	}
	reg := regs.of("n2")
	if v, _, _ := metricValue(t, reg, "leasehold_disk_errors_total", map[string]string{"op": "probe"}); v < 1 {
		t.Errorf("leasehold_disk_errors_total{op=probe} = %v", v)
	}
	if v, _, _ := metricValue(t, reg, "leasehold_disk_ok", nil); v != 0 {
		t.Errorf("leasehold_disk_ok = %v; want 0", v)
	}
	if v, _, _ := metricValue(t, reg, "leasehold_ready", nil); v != 0 {
		t.Errorf("leasehold_ready = %v; want 0", v)
	}
	// The others stay ready. Polled, not read once: on a loaded machine
	// the 200 ms test timings can hold an election, and a node that knows
	// no leader is rightly not ready for its moment (seen once under
	// -race -count=2: "no leader is known").
	waitFor(t, opWait, "n1 and n3, whose disks work, ready while n2's disk fails", func() bool {
		return c.nodes[0].Ready() == nil && c.nodes[2].Ready() == nil && n2.Ready() != nil
	})
	broken.Store(false)
	waitFor(t, opWait, "n2 ready again", func() bool { return n2.Ready() == nil })
	if v, _, _ := metricValue(t, reg, "leasehold_disk_ok", nil); v != 1 {
		t.Errorf("leasehold_disk_ok = %v after recovery; want 1", v)
	}
}

func TestReadinessWithoutLeader(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.DiskCheckInterval = 20 * time.Millisecond })
	leader := c.leader()
	// Stop both followers: the leader steps down (no quorum) and the
	// node is left with no leader.
	for i, n := range c.nodes {
		if n != leader {
			c.stop(i, true)
		}
	}
	waitFor(t, opWait, "not ready", func() bool { return leader.Ready() != nil })
	waitFor(t, opWait, "no leader known", func() bool {
		return strings.Contains(leader.Health().Ready().Error(), "no leader is known")
	})
}

// TestRaftSinkRenamesAndRescales drives the bridge with go-metrics calls
// as raft makes them.
func TestRaftSinkRenamesAndRescales(t *testing.T) {
	reg := prometheus.NewRegistry()
	sink, err := newRaftSink(reg)
	if err != nil {
		t.Fatal(err)
	}
	conf := raftMetricsConfig()
	host, _ := os.Hostname()
	conf.HostName = host // as DefaultConfig would find it; the bridge must not use it
	m, err := gometrics.New(conf, sink)
	if err != nil {
		t.Fatal(err)
	}
	// Declared at start, at zero, before raft emits anything.
	if v, _, ok := metricValue(t, reg, "leasehold_raft_state_leader", nil); !ok || v != 0 {
		t.Errorf("leasehold_raft_state_leader before any event: %v, found %v", v, ok)
	}
	if _, _, ok := metricValue(t, reg, "leasehold_raft_commitTime_seconds", nil); !ok {
		t.Error("leasehold_raft_commitTime_seconds not declared at start")
	}
	m.MeasureSince([]string{"raft", "commitTime"}, time.Now().Add(-250*time.Millisecond))
	m.AddSample([]string{"raft", "leader", "lastContact"}, 1500) // ms, as raft computes it
	m.SetGauge([]string{"raft", "peers"}, 3)
	m.IncrCounter([]string{"raft", "state", "leader"}, 1)
	m.MeasureSinceWithLabels([]string{"raft", "replication", "heartbeat"}, time.Now().Add(-time.Millisecond),
		[]gometrics.Label{{Name: "peer_id", Value: "n2"}})
	m.MeasureSince([]string{"raft", "replication", "heartbeat", "n2"}, time.Now())
	m.AddSample([]string{"raft", "fsm", "applyBatchNum"}, 7)
	m.IncrCounter([]string{"raft", "someday", "new"}, 1)

	n, sum, _ := metricValue(t, reg, "leasehold_raft_commitTime_seconds", nil)
	if n != 1 || sum < 0.25 || sum > 5 {
		t.Errorf("commitTime: %v samples, sum %v; want 1 of about 0.25 (seconds, not milliseconds)", n, sum)
	}
	if _, sum, _ := metricValue(t, reg, "leasehold_raft_leader_lastContact_seconds", nil); math.Abs(sum-1.5) > 1e-6 {
		t.Errorf("lastContact sum %v; want 1.5 s", sum)
	}
	if v, _, _ := metricValue(t, reg, "leasehold_raft_peers", nil); v != 3 {
		t.Errorf("peers %v", v)
	}
	if v, _, _ := metricValue(t, reg, "leasehold_raft_state_leader", nil); v != 1 {
		t.Errorf("state_leader %v", v)
	}
	if n, _, ok := metricValue(t, reg, "leasehold_raft_replication_heartbeat_seconds", map[string]string{"peer_id": "n2"}); !ok || n != 1 {
		t.Errorf("labelled heartbeat: %v samples, found %v", n, ok)
	}
	if _, sum, _ := metricValue(t, reg, "leasehold_raft_fsm_applyBatchNum", nil); sum != 7 {
		t.Errorf("applyBatchNum sum %v; want 7, unscaled", sum)
	}
	if v, _, ok := metricValue(t, reg, "leasehold_raft_someday_new", nil); !ok || v != 1 {
		t.Errorf("an unknown metric is not passed through: %v, %v", v, ok)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		name := mf.GetName()
		if strings.Contains(name, "n2") || (host != "" && strings.Contains(name, strings.NewReplacer(".", "_", "-", "_").Replace(host))) {
			t.Errorf("metric name %s carries a peer id or the host name", name)
		}
	}
}

var raftMetricsRegistry = sync.OnceValues(func() (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	return reg, RegisterRaftMetrics(reg)
})

// TestRaftMetricsKnown runs a cluster with raft's metrics bridged and
// checks that raft emits the metrics the dashboards use, and none the
// bridge does not know (a raft upgrade that adds or renames one fails
// here).
func TestRaftMetricsKnown(t *testing.T) {
	reg, err := raftMetricsRegistry()
	if err != nil {
		t.Fatal(err)
	}
	if err := RegisterRaftMetrics(prometheus.NewRegistry()); err == nil {
		t.Error("a second RegisterRaftMetrics in one process succeeded")
	}
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.SnapshotThreshold, cfg.SnapshotInterval = 4, 20*time.Millisecond })
	c.setLimit("k", hourly(1000))
	for i := range 40 {
		c.acquire(take("a", uint64(i+1), "k", 1, 0))
	}
	c.waitApplied()
	waitFor(t, opWait, "a snapshot", func() bool {
		n, _, _ := metricValue(t, reg, "leasehold_raft_snapshot_persist_seconds", nil)
		return n > 0
	})
	known := map[string]bool{}
	for _, m := range raftMetrics {
		known[strings.Join(m.name, "_")] = true
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if !known[mf.GetName()] {
			t.Errorf("raft emits %s, which the bridge does not know: add it to raftMetrics", mf.GetName())
		}
	}
	for _, name := range []string{"leasehold_raft_commitTime_seconds", "leasehold_raft_fsm_applyBatch_seconds",
		"leasehold_raft_replication_appendEntries_rpc_seconds", "leasehold_raft_state_leader"} {
		if n, _, _ := metricValue(t, reg, name, nil); n < 1 {
			t.Errorf("%s: %v; want observations", name, n)
		}
	}
}

// TestMemberlistMetricsKnown runs a cluster with membership on and
// raft's metrics bridged: memberlist emits through the same go-metrics
// sink, and every metric it emits is one the bridge knows, its timings in
// seconds. Without memberlist in the table its timings would be exported in
// milliseconds under names without a unit.
func TestMemberlistMetricsKnown(t *testing.T) {
	reg, err := raftMetricsRegistry()
	if err != nil {
		t.Fatal(err)
	}
	bootstrapThree(t)
	waitFor(t, opWait, "gossip rounds and push-pulls", func() bool {
		gossip, _, _ := metricValue(t, reg, "leasehold_memberlist_gossip_seconds", nil)
		pushPull, _, _ := metricValue(t, reg, "leasehold_memberlist_pushPullNode_seconds", nil)
		_, _, alive := metricValue(t, reg, "leasehold_memberlist_node_instances", map[string]string{"node_state": "alive"})
		return gossip > 0 && pushPull > 0 && alive
	})
	known := map[string]bool{}
	for _, m := range raftMetrics {
		known[strings.Join(m.name, "_")] = true
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if !known[mf.GetName()] {
			t.Errorf("%s is emitted, and the bridge does not know it: add it to raftMetrics", mf.GetName())
		}
	}
	if _, sum, _ := metricValue(t, reg, "leasehold_memberlist_gossip_seconds", nil); sum > 60 {
		t.Errorf("gossip rounds took %vs in all: milliseconds exported as seconds?", sum)
	}
}

// TestMembershipGauges: leasehold_raft_voters counts the configuration's
// voters on every node; leasehold_failure_tolerance is the leader's (one
// of three healthy voters may fail), -1 on followers, so max over the
// nodes is the leader's; leasehold_cluster_command_level is this build's
// on every node of a cluster of this build, and, without gossip, too.
func TestMembershipGauges(t *testing.T) {
	var regs perNodeRegistries
	g, nodes := bootstrapThree(t, regs.option)
	g.waitHealthy()
	// The gauges are set by each node's own loop (the tolerance from the
	// leader's autopilot state), so they are polled: a healthy cluster
	// must come to show them, with whichever node leads by then.
	var last string
	defer func() {
		if t.Failed() {
			t.Logf("last reading:%s", last)
		}
	}()
	waitFor(t, opWait, "the membership gauges of a healthy cluster", func() bool {
		leader := g.leader()
		last = ""
		for _, n := range nodes {
			reg := regs.of(n.ID())
			if v, _, _ := metricValue(t, reg, "leasehold_raft_voters", nil); v != 3 {
				last += fmt.Sprintf(" %s: leasehold_raft_voters = %v, want 3;", n.ID(), v)
			}
			want := -1.0
			if n == leader {
				want = 1
			}
			if v, _, ok := metricValue(t, reg, "leasehold_failure_tolerance", nil); !ok || v != want {
				last += fmt.Sprintf(" %s: leasehold_failure_tolerance = %v (present %v), want %v;", n.ID(), v, ok, want)
			}
			if v, _, _ := metricValue(t, reg, "leasehold_cluster_command_level", nil); v != commandLevel {
				last += fmt.Sprintf(" %s: leasehold_cluster_command_level = %v, want %v;", n.ID(), v, commandLevel)
			}
		}
		return last == ""
	})
	// Without membership: no tolerance is known.
	var static perNodeRegistries
	c := newTestCluster(t, 1, static.option)
	c.leader()
	if v, _, _ := metricValue(t, static.of("n1"), "leasehold_failure_tolerance", nil); v != -1 {
		t.Errorf("static cluster: leasehold_failure_tolerance = %v; want -1", v)
	}
	if v, _, _ := metricValue(t, static.of("n1"), "leasehold_cluster_command_level", nil); v != commandLevel {
		t.Errorf("static cluster: leasehold_cluster_command_level = %v; want %v", v, commandLevel)
	}
}

// TestChargesCountAsSpent: a Charge's tokens count in the metrics and as
// the key's admitted tokens.
func TestChargesCountAsSpent(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newNodeMetrics(reg, &Node{})
	if err != nil {
		t.Fatal(err)
	}
	a := newActivity(m)
	res := fsm.Result{Status: fsm.StatusOK, Items: []fsm.ItemResult{{Granted: 7}, {Granted: 0}}}
	a.observer().Applied(&fsm.Applied{Type: fsm.TypeCharge, Keys: [][]byte{[]byte("acme:gpt-4.1"), []byte("acme:rpm")}, Result: &res})
	a.end()
	a.fold(<-a.full)
	if v, _, _ := metricValue(t, reg, "leasehold_tokens_charged_total", nil); v != 7 {
		t.Errorf("leasehold_tokens_charged_total = %v; want 7", v)
	}
	if v, _, _ := metricValue(t, reg, "leasehold_commands_applied_total", map[string]string{"command": "charge", "status": "ok"}); v != 1 {
		t.Errorf("charge commands = %v; want 1", v)
	}
	a.mu.Lock()
	top := a.mu.keys.Top(nil, 10, "")
	a.mu.Unlock()
	if len(top) != 1 || top[0].Key != "acme:gpt-4.1" || top[0].Admitted != 7 {
		t.Errorf("keys = %+v; want acme:gpt-4.1 with 7 admitted", top)
	}
}

// TestReadinessFailsWhileTheDiskHangs: a disk check whose write or fsync
// never returns (a stalled disk, the usual way one dies) left the last
// check's success in place, so the node stayed ready for as long as its
// disk hung. Now a check that has not finished for a few intervals makes
// the node not ready, and it is ready again once the disk answers.
func TestReadinessFailsWhileTheDiskHangs(t *testing.T) {
	var hanging atomic.Bool
	release := make(chan struct{})
	defer close(release) // before the cluster's cleanup closes the nodes
	c := newTestCluster(t, 3, func(cfg *Config) {
		cfg.DiskCheckInterval = 20 * time.Millisecond
		if cfg.ID == "n2" {
			cfg.diskWrite = func(dir string) error {
				if hanging.Load() {
					<-release
				}
				return writeProbe(dir)
			}
		}
	})
	c.leader()
	n2 := c.nodes[1]
	waitFor(t, opWait, "n2 ready", func() bool { return n2.Ready() == nil })
	hanging.Store(true)
	waitFor(t, opWait, "n2 not ready, naming its hanging disk", func() bool {
		err := n2.Ready()
		return err != nil && strings.Contains(err.Error(), "disk check has not finished")
	})
	hanging.Store(false)
	release <- struct{}{} // the hung check returns
	waitFor(t, opWait, "n2 ready again", func() bool { return n2.Ready() == nil })
}
