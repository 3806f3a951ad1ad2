package cluster

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/leasehold/leasehold/fsm"
)

// Every node applies every command, so every node counts every decision:
// to see the cluster's totals take one node's counters (or max across
// nodes), never their sum. Labels are bounded by the code, never by a key.

// Buckets of the latency histograms, in seconds: 100µs to about 13s.
var latencyBuckets = prometheus.ExponentialBuckets(100e-6, 2, 18)

// nodeMetrics are a node's Prometheus metrics. Its methods are safe for
// concurrent use; a nil *nodeMetrics records nothing.
type nodeMetrics struct {
	commands  *prometheus.CounterVec // command, status
	decisions *prometheus.CounterVec // mode, result
	granted   *prometheus.CounterVec // mode
	released  prometheus.Counter
	charged   prometheus.Counter

	// Resolved series, so that apply does no label lookup. commandSeries
	// is filled as pairs occur (so the exposition lists only those that
	// did), by the FSM goroutine under activity.mu.
	commandSeries  [fsmTypes][fsmStatuses]prometheus.Counter
	decisionSeries [2][2]prometheus.Counter // [central, lease][granted, denied]
	grantedSeries  [2]prometheus.Counter

	applySeconds    prometheus.Histogram
	applyCommands   prometheus.Histogram
	batchCommands   prometheus.Histogram
	queueSeconds    prometheus.Histogram
	commitSeconds   prometheus.Histogram
	snapCapture     prometheus.Histogram
	snapPersist     prometheus.Histogram
	snapRestore     prometheus.Histogram
	snapBytes       prometheus.Gauge
	diskErrors      *prometheus.CounterVec // op
	diskProbe       prometheus.Histogram
	diskOK          prometheus.Gauge
	diskProbeError  prometheus.Counter
	diskSnapError   prometheus.Counter
	activityDropped prometheus.Counter
	refused         *prometheus.CounterVec // reason
	// refusedSeries are refused's series by capped resource.
	refusedSeries [numCaps]prometheus.Counter

	collectors []prometheus.Collector // everything registered
}

// fsmTypes and fsmStatuses size the resolved series: fsm.Type and
// fsm.Status values below them; others are counted as "other".
const (
	fsmTypes    = 16
	fsmStatuses = 32
)

// newNodeMetrics makes a node's metrics and registers them, with the gauges
// read from n at scrape time (zero until n is opened), in reg. A nil reg
// gives nil: no metrics.
func newNodeMetrics(reg prometheus.Registerer, n *Node) (*nodeMetrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &nodeMetrics{
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "leasehold_commands_applied_total",
			Help: "Commands this node applied, by command and result status (every node applies every command).",
		}, []string{"command", "status"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "leasehold_decisions_total",
			Help: "Acquire decisions applied: mode lease (a lease TTL) or central; result granted or denied.",
		}, []string{"mode", "result"}),
		granted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "leasehold_tokens_granted_total",
			Help: "Tokens granted by applied Acquires, by mode (lease or central).",
		}, []string{"mode"}),
		released: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "leasehold_tokens_released_total",
			Help: "Unused tokens given back by applied Releases.",
		}),
		charged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "leasehold_tokens_charged_total",
			Help: "Tokens charged by applied Charges (usage settled above a reservation).",
		}),
		applySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "leasehold_apply_seconds",
			Help:    "Time to apply one batch of committed Raft entries to the state machine.",
			Buckets: latencyBuckets,
		}),
		applyCommands: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "leasehold_apply_commands",
			Help:    "Commands in one batch of committed entries applied together.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 9),
		}),
		batchCommands: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "leasehold_batch_commands",
			Help:    "Commands the leader packed into one Raft entry (group commit).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11),
		}),
		queueSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "leasehold_queue_seconds",
			Help:    "Time a write waited in the leader's queue before its entry was handed to Raft.",
			Buckets: latencyBuckets,
		}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "leasehold_commit_seconds",
			Help:    "From handing an entry to Raft to its result: written on a quorum (fsync) and applied on the leader.",
			Buckets: latencyBuckets,
		}),
		snapCapture: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "leasehold_snapshot_capture_seconds",
			Help:    "Time a snapshot holds up apply: capturing the state machine.",
			Buckets: latencyBuckets,
		}),
		snapPersist: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "leasehold_snapshot_persist_seconds",
			Help:    "Time to encode and write a snapshot to disk.",
			Buckets: latencyBuckets,
		}),
		snapRestore: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "leasehold_snapshot_restore_seconds",
			Help:    "Time to restore the state machine from a snapshot.",
			Buckets: latencyBuckets,
		}),
		snapBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "leasehold_snapshot_bytes",
			Help: "Size of the last snapshot this node wrote.",
		}),
		diskErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "leasehold_disk_errors_total",
			Help: "Failed disk writes: op probe (the readiness write check) or snapshot.",
		}, []string{"op"}),
		diskProbe: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "leasehold_disk_probe_seconds",
			Help:    "Time of the readiness disk check: write, fsync and remove a small file in the data directory.",
			Buckets: latencyBuckets,
		}),
		activityDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "leasehold_activity_dropped_total",
			Help: "Applied acquire items left out of the per-key activity (the console's rates) because counting fell behind.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "leasehold_requests_refused_total",
			Help: "Requests the leader refused before the log because the state machine holds as much as it may: reason " +
				"max_keys (a new key) or max_sessions (a new client_id).",
		}, []string{"reason"}),
		diskOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "leasehold_disk_ok",
			Help: "1 if the last disk check succeeded, 0 if it failed.",
		}),
	}
	m.diskProbeError = m.diskErrors.WithLabelValues("probe")
	m.diskSnapError = m.diskErrors.WithLabelValues("snapshot")
	m.diskOK.Set(1)
	for c := range numCaps {
		m.refusedSeries[c] = m.refused.WithLabelValues(capNames[c].reason)
	}
	for mode, name := range []string{"central", "lease"} {
		m.grantedSeries[mode] = m.granted.WithLabelValues(name)
		for res, r := range []string{"granted", "denied"} {
			m.decisionSeries[mode][res] = m.decisions.WithLabelValues(name, r)
		}
	}
	gaugeFunc := func(name, help string, fn func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
			if !n.opened.Load() {
				return 0
			}
			return fn()
		})
	}
	gauges := []prometheus.Collector{
		gaugeFunc("leasehold_keys", "Keys in the state machine (with a limit or live state).", func() float64 {
			return float64(n.stats().Keys)
		}),
		gaugeFunc("leasehold_leases", "Live leases in the state machine.", func() float64 { return float64(n.stats().Leases) }),
		gaugeFunc("leasehold_sessions", "Client sessions the state machine remembers (for retries).", func() float64 {
			return float64(n.stats().Sessions)
		}),
		gaugeFunc("leasehold_max_keys", "This node's cap on leasehold_keys (--max-keys): as the leader it refuses a new key at it.",
			func() float64 { return float64(n.cfg.MaxKeys) }),
		gaugeFunc("leasehold_max_sessions", "This node's cap on leasehold_sessions (--max-sessions): as the leader it refuses a "+
			"new client_id at it.", func() float64 { return float64(n.cfg.MaxSessions) }),
		gaugeFunc("leasehold_raft_term", "This node's current Raft term.", func() float64 { return float64(n.raft.CurrentTerm()) }),
		gaugeFunc("leasehold_raft_applied_index", "Index of the last Raft entry applied on this node.", func() float64 {
			return float64(n.raft.AppliedIndex())
		}),
		gaugeFunc("leasehold_raft_commit_index", "Index of the last Raft entry this node knows committed.", func() float64 {
			return float64(n.raft.CommitIndex())
		}),
		gaugeFunc("leasehold_is_leader", "1 if this node is the Raft leader.", func() float64 { return b2f(n.IsLeader()) }),
		gaugeFunc("leasehold_leader_known", "1 if this node knows a leader.", func() float64 {
			id, _ := n.Leader()
			return b2f(id != "")
		}),
		gaugeFunc("leasehold_ready", "1 if the node is ready (GET /readyz): a leader known, caught up, its disk writable.", func() float64 {
			return b2f(n.Ready() == nil)
		}),
		gaugeFunc("leasehold_log_time_seconds", "Log time of the last applied command.", func() float64 {
			return float64(n.fsm.now()) / float64(time.Second)
		}),
		gaugeFunc("leasehold_raft_voters", "Voters in the latest Raft configuration this node knows.", func() float64 {
			return float64(n.voters())
		}),
		gaugeFunc("leasehold_cluster_command_level", "The command level this node sends commands at when it leads: with "+
			"gossip, the least level the servers of the configuration gossip (1: Acquire spans), else this build's.",
			func() float64 { return float64(n.sendLevel.Load()) }),
		gaugeFunc("leasehold_failure_tolerance", "On the leader with membership on: how many more voters may fail with a quorum "+
			"of healthy ones left (autopilot's health, else gossip's); -1 elsewhere, so max over the nodes is the leader's.",
			func() float64 { return float64(n.failureTolerance()) }),
	}
	m.collectors = []prometheus.Collector{m.commands, m.decisions, m.granted, m.released, m.charged, m.applySeconds, m.applyCommands,
		m.batchCommands, m.queueSeconds, m.commitSeconds, m.snapCapture, m.snapPersist, m.snapRestore, m.snapBytes,
		m.diskErrors, m.diskProbe, m.diskOK, m.activityDropped, m.refused}
	m.collectors = append(m.collectors, gauges...)
	for i, c := range m.collectors {
		if err := reg.Register(c); err != nil {
			for _, c := range m.collectors[:i] {
				reg.Unregister(c)
			}
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}

// unregister takes m's metrics out of reg again (Open failed).
func (m *nodeMetrics) unregister(reg prometheus.Registerer) {
	if m == nil {
		return
	}
	for _, c := range m.collectors {
		reg.Unregister(c)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// commandName is the command label of t.
func commandName(t fsm.Type) string {
	switch t {
	case fsm.TypeSetLimit:
		return "set_limit"
	case fsm.TypeDeleteLimit:
		return "delete_limit"
	case fsm.TypeDeleteLimits:
		return "delete_limits"
	case fsm.TypeAcquire:
		return "acquire"
	case fsm.TypeRelease:
		return "release"
	case fsm.TypeCharge:
		return "charge"
	case fsm.TypeExtend:
		return "extend"
	case fsm.TypeRestrict:
		return "restrict"
	}
	return "other"
}

// statusName is the status label of s: its fsm name with underscores.
func statusName(s fsm.Status) string {
	switch s {
	case fsm.StatusOK:
		return "ok"
	case fsm.StatusDenied:
		return "denied"
	case fsm.StatusNoLimit:
		return "no_limit"
	case fsm.StatusStale:
		return "stale"
	case fsm.StatusLeaseGone:
		return "lease_gone"
	case fsm.StatusSeqReused:
		return "seq_reused"
	}
	if s.Invalid() {
		return "invalid"
	}
	return "other"
}

// commandCounter returns the series of (t, st). Only the FSM goroutine
// calls it, under activity.mu.
func (m *nodeMetrics) commandCounter(t fsm.Type, st fsm.Status) prometheus.Counter {
	ti, si := min(int(t), fsmTypes-1), min(int(st), fsmStatuses-1)
	c := m.commandSeries[ti][si]
	if c == nil {
		c = m.commands.WithLabelValues(commandName(t), statusName(st))
		m.commandSeries[ti][si] = c
	}
	return c
}

// observe records d in the histogram h picks, unless m is nil.
func (m *nodeMetrics) observe(h func(*nodeMetrics) prometheus.Histogram, d time.Duration) {
	if m != nil {
		h(m).Observe(d.Seconds())
	}
}
