// Package cluster runs one Leasehold node: a hashicorp/raft member whose
// replicated state is an fsm.Machine, stored in a hashicorp/raft-wal log,
// raft-boltdb/v2 (bbolt: the term and vote) and file snapshots under one
// data directory, talking to its peers over TCP.
//
// [Open] starts a node from a [Config]; a data directory with Raft state
// resumes; an empty one is bootstrapped with the static peer list, unless its
// peers already form a cluster (then it refuses, or with Config.Replace
// joins it without bootstrapping); one that is corrupt, locked or has lost
// its state stops Open with a one-line [StateError]. A [Node] implements
// transport.Service: the leader answers writes (Acquire, Release, Charge,
// Extend, Restrict, SetLimit, DeleteLimit), GetLimit and ListLimits; a
// follower answers them with a *transport.NotLeaderError naming the leader.
// Status is answered by any node from its local view. [Node.Close] hands
// leadership over, stops Raft and closes the store.
//
// Invariants (the numbers are those of the design brief), each tested:
//
//   - Log time (1). The leader stamps every command with
//     T = max(T_last, T_base + (Monotonic() - M_base)), where T_base is the
//     machine's log time after the leader's post-election Barrier and M_base
//     its monotonic clock then. Never a wall clock, never Log.AppendedAt. Time
//     spent in elections or with the whole cluster down is not credited.
//   - Decisions in Apply (3). A write is answered only after raft reports it
//     committed and applied; the answer is the machine's own result from
//     Apply, never a read of state on the leader. The leader packs
//     concurrent writes into one Raft entry (an fsm.Batch at one stamp, up
//     to 1024 commands, a few entries in flight, sealed when the leader's
//     disk is free and, briefly, once the callers just answered are back);
//     each write still gets its own result, or its entry's error.
//   - Idempotency (4). An error that leaves the outcome unknown matches
//     transport.ErrUnknownOutcome; a retry with the same (client id, seq)
//     returns the first result, from the machine's dedup table.
//   - Durability (6). Each append to the log is fsynced before raft
//     acknowledges it; a node restarted on the same directory resumes from its snapshot
//     and log, and log time resumes from the last committed stamp.
//   - A node never bootstraps twice, and never starts without the term and
//     vote it had: a directory that held Raft state and lost it (raft.db
//     truncated or deleted, snapshots left, the marker file left) is
//     refused with ErrStateLost.
//   - Raft over mutual TLS (Config.TLS). Peers present node certificates of
//     the cluster's CA; a dialed peer's certificate names the node id
//     dialed; an accepted request whose RPC header claims another node than
//     its connection's certificate names never reaches raft (DESIGN.md).
//   - Membership (Config.Gossip): the Raft configuration is the authority;
//     gossip (memberlist) only informs the leader, whose reconcile loop
//     (raft-autopilot) adds new nodes as non-voters, promotes them once
//     healthy, removes a dead voter only after DeadServerTimeout and within
//     failure tolerance, never removes itself, and refuses an operator's
//     removal that would leave fewer healthy voters than a quorum. A removed
//     node that is still running stops taking part. Gossip authenticates no
//     one: the leader adds, moves, re-adds or removes a member on gossip's
//     word only once the member, asked over Raft (mutual TLS naming its
//     id), bears it out (DESIGN.md).
//
// A node reports Prometheus metrics into Config.Metrics, its readiness
// ([Node.Health]: a leader known, caught up, a periodic disk write that
// succeeds), and per-key activity ([Node.Activity]: the busiest keys it has
// applied commands for, counted outside the replicated state through an
// fsm.Observer). [RegisterRaftMetrics] bridges raft's own go-metrics into a
// registry, once per process.
//
// Package cluster may import fsm, transport (for its Service interface,
// errors and generated messages), internal/pki, internal/ratelog and
// internal/topk, hashicorp/raft, raft-autopilot, memberlist, raft-boltdb,
// raft-wal, bbolt, hclog, go-metrics and client_golang; never client or cmd.
package cluster
