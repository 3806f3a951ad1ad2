// Package fsm is Leasehold's replicated state machine: the commands in the Raft
// log, how they apply, and how the state is snapshotted and restored.
//
// A log entry is one byte of [Type] followed by a protobuf message (schema in
// command.proto; [Encode] and [Decode]). [Machine.Apply] applies an entry and
// returns one [Result] per command. Nothing here knows about Raft: package
// cluster wraps a Machine in a raft.FSM.
//
// Invariants, each tested:
//
//   - Log time (DESIGN.md invariant 1). The machine never reads a clock. Each
//     command carries the leader's stamp; Apply clamps it to be
//     non-decreasing, so a stamp from the past refills nothing.
//   - Integer state (2). Every replicated quantity is an int64 of nanoseconds
//     or tokens; the algorithms in package limiter are integer and saturating.
//   - Decisions in Apply (3). An Acquire is decided and its tokens debited in
//     the same Apply; a lease's tokens are gone from the bucket before any
//     reply is sent. The over-admission bound, with debt (Charge, up to a
//     limit's MaxDebt) and extensions (Extend), is stated on the grant code.
//   - Idempotency (4). Acquire, Release, Charge, Extend and Restrict carry
//     (client id, seq); a retry returns the first result. Each result is
//     kept with a digest of its command's body, so a seq reused for a
//     different command gets StatusSeqReused, never another command's
//     result. The table, digests included, is part of every snapshot
//     (format v3).
//   - Determinism (5). Machines fed the same entries hold the same state and
//     write byte-identical snapshots: no map is iterated where its order could
//     leak, the hash tables' random seeds change no answer, eviction follows a
//     rotation that is itself state, and a restored machine continues exactly
//     as the original.
//   - Bad input is a Result with a Status and a Message. Apply panics only on an
//     entry it cannot decode, so that a replica stops rather than diverge.
//
// Package fsm imports package limiter and protowire; never hashicorp/raft, a
// clock, the OS or goroutines.
package fsm
