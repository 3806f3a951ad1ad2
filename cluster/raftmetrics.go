package cluster

import (
	"fmt"
	"strings"
	"sync"
	"time"

	gometrics "github.com/hashicorp/go-metrics/compat"
	promsink "github.com/hashicorp/go-metrics/compat/prometheus"
	"github.com/prometheus/client_golang/prometheus"
)

// hashicorp/raft v1.7 and raft-boltdb/v2 emit their metrics through
// github.com/hashicorp/go-metrics/compat, which forwards to armon/go-metrics
// unless the binary is built with the hashicorpmetrics tag (then to
// hashicorp/go-metrics). The bridge below goes through the same compat
// packages, so it always reaches the module raft emits to.

// RaftMetricsExpiry is how long a raft metric series that carries labels
// (a peer's replication timings, an RPC type's) stays exported after its
// last update; the series without labels are declared up front and never
// expire. go-metrics' default, 60s, drops a quiet series between two
// scrapes of a slow scraper; never expiring would keep a removed peer's
// series for good.
const RaftMetricsExpiry = 5 * time.Minute

var raftMetricsOnce struct {
	sync.Mutex
	done bool
}

// RegisterRaftMetrics makes the metrics that hashicorp/raft, raft-boltdb
// and memberlist (membership's gossip) emit through go-metrics Prometheus
// metrics in reg, through go-metrics' Prometheus sink:
//
//   - named as raft names them, prefixed leasehold_ (leasehold_raft_commitTime_seconds,
//     leasehold_raft_peers), so raft's own documentation applies;
//   - timings in seconds, named _seconds: go-metrics measures them in
//     milliseconds (its timers, and the samples and gauges raft computes in
//     milliseconds itself, such as raft.leader.lastContact);
//   - no host name in gauge names (go-metrics puts it there by default),
//     no runtime metrics (the Go collector has them);
//   - the variants that carry a peer's id in the metric name are dropped:
//     raft emits each with a peer_id label too;
//   - every series without labels declared at start, at zero, so that none
//     disappears after go-metrics' expiry; labelled ones expire after
//     RaftMetricsExpiry of silence.
//
// go-metrics keeps one sink per process, so this can be done once per
// process: a second call returns an error. Every node in the process then
// reports into reg (one node per process is what serve runs).
func RegisterRaftMetrics(reg prometheus.Registerer) error {
	raftMetricsOnce.Lock()
	defer raftMetricsOnce.Unlock()
	if raftMetricsOnce.done {
		return fmt.Errorf("raft metrics: already registered in this process")
	}
	sink, err := newRaftSink(reg)
	if err != nil {
		return err
	}
	if _, err := gometrics.NewGlobal(raftMetricsConfig(), sink); err != nil {
		return fmt.Errorf("raft metrics: %w", err)
	}
	raftMetricsOnce.done = true
	return nil
}

// raftMetricsConfig is the go-metrics configuration of the bridge.
func raftMetricsConfig() *gometrics.Config {
	conf := gometrics.DefaultConfig("")
	conf.HostName = ""
	conf.EnableHostname = false
	conf.EnableHostnameLabel = false
	conf.EnableRuntimeMetrics = false
	conf.TimerGranularity = time.Millisecond // raftSink converts to seconds
	conf.FilterDefault = true
	return conf
}

// metricKind is how go-metrics reports a raft metric.
type metricKind int

const (
	kindCounter metricKind = iota + 1
	kindGauge
	kindSample
)

// raftMetric is one metric raft emits, as the bridge exports it.
type raftMetric struct {
	kind metricKind
	// millis: the value is in milliseconds; it is exported in seconds.
	millis bool
	// labelled: raft emits it with labels, so it is not declared up front.
	labelled bool
	// peerVariant: raft also emits it with the peer's id appended to the
	// name; that variant is dropped.
	peerVariant bool
	help        string

	name []string // exported name, as key parts
}

// raftMetrics lists what hashicorp/raft v1.7.3, raft-boltdb/v2 v2.3.1 and
// memberlist v0.6.0 emit, by their go-metrics key. TestRaftMetricsKnown
// and TestMemberlistMetricsKnown fail if a running cluster emits one this
// table does not know.
var raftMetrics = map[string]*raftMetric{
	"raft.apply":                           {kind: kindCounter, help: "Raft entries proposed on this node (as leader)."},
	"raft.barrier":                         {kind: kindCounter, help: "Raft barriers issued."},
	"raft.verify_leader":                   {kind: kindCounter, help: "Leadership verifications (linearizable reads)."},
	"raft.restore":                         {kind: kindCounter, help: "User snapshot restores."},
	"raft.state.follower":                  {kind: kindCounter, help: "Times this node became a follower."},
	"raft.state.candidate":                 {kind: kindCounter, help: "Times this node became a candidate (started an election)."},
	"raft.state.leader":                    {kind: kindCounter, help: "Times this node became the leader."},
	"raft.transition.heartbeat_timeout":    {kind: kindCounter, help: "Elections started because the leader was not heard from."},
	"raft.transition.leader_lease_timeout": {kind: kindCounter, help: "Times this leader stepped down, not hearing from a quorum."},
	"raft.replication.appendEntries.logs":  {kind: kindCounter, labelled: true, peerVariant: true, help: "Log entries replicated to a peer (as leader)."},
	"raft.boltdb.totalReadTxn":             {kind: kindCounter, help: "bbolt read transactions."},
	"raft.boltdb.txstats.cursorCount":      {kind: kindCounter, help: "bbolt cursors created."},
	"raft.boltdb.txstats.nodeCount":        {kind: kindCounter, help: "bbolt node allocations."},
	"raft.boltdb.txstats.nodeDeref":        {kind: kindCounter, help: "bbolt node dereferences."},
	"raft.boltdb.txstats.rebalance":        {kind: kindCounter, help: "bbolt node rebalances."},
	"raft.boltdb.txstats.split":            {kind: kindCounter, help: "bbolt node splits."},
	"raft.boltdb.txstats.spill":            {kind: kindCounter, help: "bbolt node spills."},
	"raft.boltdb.txstats.write":            {kind: kindCounter, help: "bbolt page writes."},

	"raft.peers":                       {kind: kindGauge, help: "Servers in the latest Raft configuration."},
	"raft.commitNumLogs":               {kind: kindGauge, help: "Entries in the last group the leader committed at once."},
	"raft.leader.dispatchNumLogs":      {kind: kindGauge, help: "Entries in the last group the leader wrote to its log at once."},
	"raft.leader.oldestLogAge":         {kind: kindGauge, millis: true, help: "Age of the oldest entry in the log (how far back a lagging follower can catch up without a snapshot)."},
	"raft.fsm.lastRestoreDuration":     {kind: kindGauge, millis: true, help: "How long the last snapshot restore took."},
	"raft.boltdb.numFreePages":         {kind: kindGauge, help: "bbolt free pages."},
	"raft.boltdb.numPendingPages":      {kind: kindGauge, help: "bbolt pages pending release."},
	"raft.boltdb.freePageBytes":        {kind: kindGauge, help: "bbolt bytes in free pages."},
	"raft.boltdb.freelistBytes":        {kind: kindGauge, help: "bbolt bytes of the freelist."},
	"raft.boltdb.openReadTxn":          {kind: kindGauge, help: "bbolt read transactions open."},
	"raft.boltdb.txstats.pageCount":    {kind: kindGauge, help: "bbolt pages allocated (last interval)."},
	"raft.boltdb.txstats.pageAlloc":    {kind: kindGauge, help: "bbolt bytes allocated in pages (last interval)."},
	"raft.thread.main.saturation":      {kind: kindSample, help: "Share of time raft's main goroutine was busy (0-1)."},
	"raft.thread.fsm.saturation":       {kind: kindSample, help: "Share of time raft's FSM goroutine was busy (0-1)."},
	"raft.fsm.applyBatchNum":           {kind: kindSample, help: "Entries handed to the FSM in one batch."},
	"raft.boltdb.logSize":              {kind: kindSample, help: "Bytes of one log entry written."},
	"raft.boltdb.logsPerBatch":         {kind: kindSample, help: "Log entries written in one bbolt transaction."},
	"raft.boltdb.logBatchSize":         {kind: kindSample, help: "Bytes written in one bbolt transaction."},
	"raft.boltdb.writeCapacity":        {kind: kindSample, help: "Log entries per second bbolt could write at the last write's speed."},
	"raft.leader.lastContact":          {kind: kindSample, millis: true, help: "Time since the leader last heard from a follower, one sample per follower at each leader-lease check (as leader)."},
	"raft.commitTime":                  {kind: kindSample, millis: true, help: "From the leader writing an entry to its commit."},
	"raft.fsm.apply":                   {kind: kindSample, millis: true, help: "Applying one entry to the FSM."},
	"raft.fsm.applyBatch":              {kind: kindSample, millis: true, help: "Applying one batch of entries to the FSM."},
	"raft.fsm.store_config":            {kind: kindSample, millis: true, help: "Storing a configuration entry in the FSM."},
	"raft.fsm.enqueue":                 {kind: kindSample, millis: true, help: "Handing committed entries to the FSM goroutine."},
	"raft.fsm.snapshot":                {kind: kindSample, millis: true, help: "The FSM's Snapshot (capture) call."},
	"raft.fsm.restore":                 {kind: kindSample, millis: true, help: "The FSM's Restore call."},
	"raft.restoreUserSnapshot":         {kind: kindSample, millis: true, help: "Restoring a user snapshot."},
	"raft.leader.dispatchLog":          {kind: kindSample, millis: true, help: "The leader writing entries to its own log."},
	"raft.rpc.processHeartbeat":        {kind: kindSample, millis: true, help: "A follower handling a heartbeat."},
	"raft.rpc.appendEntries":           {kind: kindSample, millis: true, help: "A follower handling an AppendEntries."},
	"raft.rpc.appendEntries.storeLogs": {kind: kindSample, millis: true, help: "A follower writing appended entries to its log."},
	"raft.rpc.appendEntries.processLogs": {kind: kindSample, millis: true,
		help: "A follower processing appended entries after storing them."},
	"raft.rpc.requestVote":              {kind: kindSample, millis: true, help: "Handling a vote request."},
	"raft.rpc.installSnapshot":          {kind: kindSample, millis: true, help: "A follower installing a snapshot from the leader."},
	"raft.candidate.electSelf":          {kind: kindSample, millis: true, help: "A candidate requesting votes."},
	"raft.candidate.preElectSelf":       {kind: kindSample, millis: true, help: "A candidate requesting pre-votes."},
	"raft.snapshot.takeSnapshot":        {kind: kindSample, millis: true, help: "Taking a snapshot, capture and persist."},
	"raft.snapshot.create":              {kind: kindSample, millis: true, help: "Creating a snapshot's sink."},
	"raft.snapshot.persist":             {kind: kindSample, millis: true, help: "Persisting a snapshot."},
	"raft.compactLogs":                  {kind: kindSample, millis: true, help: "Removing log entries a snapshot covers."},
	"raft.removeOldLogs":                {kind: kindSample, millis: true, help: "Removing old log entries."},
	"raft.boltdb.getLog":                {kind: kindSample, millis: true, help: "Reading one log entry from bbolt."},
	"raft.boltdb.storeLogs":             {kind: kindSample, millis: true, help: "Writing log entries to bbolt (with fsync)."},
	"raft.boltdb.txstats.rebalanceTime": {kind: kindSample, millis: true, help: "bbolt rebalancing (last interval)."},
	"raft.boltdb.txstats.spillTime":     {kind: kindSample, millis: true, help: "bbolt spilling (last interval)."},
	"raft.boltdb.txstats.writeTime":     {kind: kindSample, millis: true, help: "bbolt writing (last interval)."},
	"raft.net.getRPCType":               {kind: kindSample, millis: true, help: "Reading an RPC's type from a connection."},
	"raft.net.rpcDecode":                {kind: kindSample, millis: true, labelled: true, help: "Decoding an RPC, by type."},
	"raft.net.rpcEnqueue":               {kind: kindSample, millis: true, labelled: true, help: "Handing a decoded RPC to raft, by type."},
	"raft.net.rpcRespond":               {kind: kindSample, millis: true, labelled: true, help: "Waiting for raft's answer to an RPC, by type."},
	"raft.replication.installSnapshot":  {kind: kindSample, millis: true, labelled: true, peerVariant: true, help: "Sending a snapshot to a peer (as leader)."},
	"raft.replication.heartbeat":        {kind: kindSample, millis: true, labelled: true, peerVariant: true, help: "A heartbeat to a peer (as leader)."},
	"raft.replication.appendEntries.rpc": {kind: kindSample, millis: true, labelled: true, peerVariant: true,
		help: "An AppendEntries to a peer (as leader)."},

	// memberlist v0.6.0 emits through the same compat packages once
	// membership is on (Config.Gossip); without it these stay at zero.
	"memberlist.tcp.accept":       {kind: kindCounter, help: "Gossip TCP connections accepted (push-pull, streams)."},
	"memberlist.tcp.connect":      {kind: kindCounter, help: "Gossip TCP connections made."},
	"memberlist.tcp.sent":         {kind: kindCounter, help: "Bytes sent over gossip TCP connections."},
	"memberlist.udp.sent":         {kind: kindCounter, help: "Bytes of gossip UDP packets sent."},
	"memberlist.udp.received":     {kind: kindCounter, help: "Bytes of gossip UDP packets received."},
	"memberlist.msg.alive":        {kind: kindCounter, help: "Alive messages about members processed."},
	"memberlist.msg.suspect":      {kind: kindCounter, help: "Suspect messages about members processed."},
	"memberlist.msg.dead":         {kind: kindCounter, help: "Dead messages about members processed."},
	"memberlist.degraded.probe":   {kind: kindCounter, help: "Failure-detector probes run while this node's health score was degraded."},
	"memberlist.degraded.timeout": {kind: kindCounter, help: "Suspicion timeouts cut short by confirmations from other members."},
	"memberlist.health.score":     {kind: kindGauge, help: "This node's own gossip health (awareness) score: 0 is healthy, higher means it is slow to answer probes."},
	"memberlist.size.local":       {kind: kindGauge, help: "Bytes of the last push-pull state this node sent."},
	"memberlist.node.instances": {kind: kindGauge, labelled: true,
		help: "Members this node's gossip knows, by node_state (alive, suspect, dead, left), at its last push-pull."},
	"memberlist.queue.broadcasts": {kind: kindSample, help: "Gossip broadcasts queued, sampled periodically."},
	"memberlist.size.remote":      {kind: kindSample, help: "Bytes of a push-pull state received from a member."},
	"memberlist.probeNode":        {kind: kindSample, millis: true, help: "One failure-detector probe of a member."},
	"memberlist.gossip":           {kind: kindSample, millis: true, help: "One gossip round."},
	"memberlist.pushPullNode":     {kind: kindSample, millis: true, help: "One push-pull state exchange with a member."},
}

// raftTree finds a raftMetric by key parts without joining them.
type raftTree struct {
	children map[string]*raftTree
	m        *raftMetric
}

var (
	raftTreeOnce sync.Once
	raftTreeRoot *raftTree
)

func raftMetricTree() *raftTree {
	raftTreeOnce.Do(func() {
		raftTreeRoot = &raftTree{}
		for key, m := range raftMetrics {
			parts := strings.Split(key, ".")
			m.name = append([]string{"leasehold"}, parts...)
			if m.millis {
				m.name = append(m.name, "seconds")
			}
			t := raftTreeRoot
			for _, p := range parts {
				if t.children == nil {
					t.children = map[string]*raftTree{}
				}
				c := t.children[p]
				if c == nil {
					c = &raftTree{}
					t.children[p] = c
				}
				t = c
			}
			t.m = m
		}
	})
	return raftTreeRoot
}

// lookupRaft returns the metric for key; drop reports a key that is not
// exported (the peer-in-name variants). Unknown keys return nil, false.
func lookupRaft(key []string) (m *raftMetric, drop bool) {
	t := raftMetricTree()
	for i, p := range key {
		c := t.children[p]
		if c == nil {
			if t.m != nil && t.m.peerVariant && i == len(key)-1 {
				return nil, true
			}
			return nil, false
		}
		t = c
	}
	return t.m, false
}

// raftSink is a go-metrics sink that renames and rescales raft's metrics
// (see RegisterRaftMetrics) and hands them to go-metrics' Prometheus sink.
// It is safe for concurrent use, as the Prometheus sink is.
type raftSink struct {
	next *promsink.PrometheusSink
}

// newRaftSink makes the Prometheus sink, registered in reg, with every
// unlabelled raft metric declared, and wraps it.
func newRaftSink(reg prometheus.Registerer) (*raftSink, error) {
	raftMetricTree()
	opts := promsink.PrometheusOpts{
		Expiration: RaftMetricsExpiry,
		Registerer: reg,
		Name:       "leasehold_raft_metrics_sink",
	}
	for _, m := range raftMetrics {
		if m.labelled {
			continue
		}
		switch m.kind {
		case kindCounter:
			opts.CounterDefinitions = append(opts.CounterDefinitions, promsink.CounterDefinition{Name: m.name, Help: m.help})
		case kindGauge:
			opts.GaugeDefinitions = append(opts.GaugeDefinitions, promsink.GaugeDefinition{Name: m.name, Help: m.help})
		case kindSample:
			opts.SummaryDefinitions = append(opts.SummaryDefinitions, promsink.SummaryDefinition{Name: m.name, Help: m.help})
		}
	}
	next, err := promsink.NewPrometheusSinkFrom(opts)
	if err != nil {
		return nil, fmt.Errorf("raft metrics: %w", err)
	}
	return &raftSink{next: next}, nil
}

// rename returns the exported key and value of a raft metric, or ok false
// for one that is dropped. Unknown keys keep their name, prefixed.
func (s *raftSink) rename(key []string, val float32) ([]string, float32, bool) {
	m, drop := lookupRaft(key)
	switch {
	case drop:
		return nil, 0, false
	case m == nil:
		return append([]string{"leasehold"}, key...), val, true
	case m.millis:
		return m.name, val / 1000, true
	}
	return m.name, val, true
}

func (s *raftSink) SetGauge(key []string, val float32) { s.SetGaugeWithLabels(key, val, nil) }

func (s *raftSink) SetGaugeWithLabels(key []string, val float32, labels []gometrics.Label) {
	if k, v, ok := s.rename(key, val); ok {
		s.next.SetGaugeWithLabels(k, v, labels)
	}
}

// EmitKey is dropped, as the Prometheus sink drops it.
func (s *raftSink) EmitKey([]string, float32) {}

func (s *raftSink) IncrCounter(key []string, val float32) { s.IncrCounterWithLabels(key, val, nil) }

func (s *raftSink) IncrCounterWithLabels(key []string, val float32, labels []gometrics.Label) {
	if k, v, ok := s.rename(key, val); ok {
		s.next.IncrCounterWithLabels(k, v, labels)
	}
}

func (s *raftSink) AddSample(key []string, val float32) { s.AddSampleWithLabels(key, val, nil) }

func (s *raftSink) AddSampleWithLabels(key []string, val float32, labels []gometrics.Label) {
	if k, v, ok := s.rename(key, val); ok {
		s.next.AddSampleWithLabels(k, v, labels)
	}
}
