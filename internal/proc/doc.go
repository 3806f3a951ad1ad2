// Package proc runs and stops the processes of a local Leasehold cluster
// for the tools around it: the end-to-end tests (internal/e2e), the chaos
// harness (jepsen), `leasehold cluster` and `leasehold bench compare`. It
// is the one place that knows the command line of `leasehold serve`.
//
//   - Build builds the leasehold binary (or another package), with build
//     tags such as chaosclock.
//   - Process is any child process: start, start again, Kill (SIGKILL),
//     Pause (SIGSTOP), Resume (SIGCONT), Stop (SIGTERM, then SIGKILL after
//     a grace), Wait for its exit error; its output appended to a log, its
//     stdout optionally read line by line, extra environment, a hook before
//     each start and one after each exit. Exits the runner did not cause
//     (Kill, Stop) are recorded as unexpected.
//   - NodeSpec is one node's flags (id, data, addresses, peers, raft-dial,
//     log level, TLS files or --insecure, HTTP listener and console peers,
//     ExtraArgs for flags this package does not know); Layout lays out
//     n1..nN on one host, on free or fixed ports, each with a node
//     certificate unless Insecure.
//   - Certs is a cluster's CA and the certificates it issued, in one
//     directory as `leasehold certs` lays it out, each made on first use
//     and kept after; TLSFiles are one certificate's files, as serve flags
//     or gRPC credentials.
//   - Cluster is a set of Nodes (a Process and a client connection each,
//     presenting the operator certificate AdminName over TLS).
//   - Admin calls the client API of every node: Status of all at once,
//     Leader, WaitLeader, WaitHealthy, and OnLeader, a call on the leader
//     retried on NotLeader and unknown outcomes. Dial makes one over
//     addresses (the CLI) with a Security, Cluster.Admin one over a
//     cluster's nodes.
//   - Security is how a connection is secured: TLS with TLSFiles, or
//     plain text (Insecure, Plaintext); a Cluster's is Cluster.Security.
//
// Invariants:
//
//   - A process is signalled only by the PID of the process it started,
//     and only while that run has not been waited for: never a PID the
//     kernel may have reused, never by name.
//   - Every child runs in its own process group, so a Ctrl-C at the
//     terminal reaches only the runner, which stops its children itself; on
//     Linux the kernel kills a child whose runner died first (Pdeathsig).
//   - Every wait is bounded: Kill by KillWait, Stop by its grace plus
//     KillWait, each Status call by StatusTimeout and each OnLeader call by
//     CallTimeout; WaitLeader and WaitHealthy by their context, and they
//     return early when a process of the cluster exits on its own.
//   - Every goroutine has an owner and an exit: one per run waits for the
//     process (and reads its stdout), ending when it exits; the Status
//     fan-out ends with its calls; OnLeader's calls (a node slow to answer
//     is kept while the next is asked) end before it returns.
//   - The core returns errors and never calls testing's Fatal, so that
//     non-test code uses it; package proctest holds the testing.TB helpers.
//   - TLS is the default: a Layout serves plain text only when told
//     (Insecure), and then every node says so (--insecure). The harness's
//     connections speak plain text only when told too: Dial and
//     NewCluster refuse to choose for the caller (ErrNoTransportSecurity),
//     as the SDK's client.Dial does.
//
// It imports transport (error mapping), its generated leaseholdpb, pki and
// loopback from this module; never cluster, fsm, limiter or client.
package proc
