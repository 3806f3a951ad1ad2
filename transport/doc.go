// Package transport is Leasehold's gRPC API: the schema (leasehold.proto), its
// generated code (package leaseholdpb), the server adapter and the mapping
// between Go errors and gRPC status codes.
//
// A node serves the API by implementing [Service] and calling [Register]; the
// [Server] in between validates requests and maps errors. A [Guard] stands in
// front of it: the grpc.Server is made with the Guard's ServerOptions and
// serves on the Guard's Listener, which authenticate callers by their
// certificates (mutual TLS), allow each RPC by role ([MethodRole]) and cap
// connections and RPCs in flight. Clients (package client, the CLI) call the
// generated leaseholdpb.LeaseholdClient and pass every error through
// [FromStatus].
//
// Invariants, each tested:
//
//   - Every request field is validated before the request reaches the
//     Service ([ValidateAcquire] and friends, with the limits [MaxKeyLen],
//     [MaxItems], [MaxClientIDLen], [MaxLeaseTTL], [MaxSlots],
//     [MaxBlock]): every repeated field's length is bounded, and keys are
//     UTF-8. A bad request comes back as INVALID_ARGUMENT naming the field;
//     the Service never sees it.
//   - A server made with [ServerOptions] reads no request above
//     [MaxRequestBytes] (RESOURCE_EXHAUSTED, from gRPC), and answers one that
//     does not decode (malformed protobuf, a key that is not UTF-8) with
//     INVALID_ARGUMENT naming the problem, after its interceptors.
//   - gRPC status codes appear only in this package. Services return the Go
//     errors defined here; [ToStatus] turns them into statuses on the server
//     and [FromStatus] turns them back on the client, losslessly: the leader
//     of a *NotLeaderError and the field and reason of an *InvalidError travel
//     as status details. Callers match errors with errors.Is and errors.As,
//     never by their text.
//   - A denial is a response (AcquireResponse.allowed false), not an error.
//   - With TLS, a call reaches the Server only if its certificate's role
//     allows the method: a client may Acquire (also on an AcquireStream),
//     Release, Charge, Extend, Restrict, GetLimit and Status; every other method, present or
//     future, needs an operator (a node counts as one). Otherwise the
//     answer is PERMISSION_DENIED ([ErrPermissionDenied]), or
//     UNAUTHENTICATED for a certificate without a Leasehold identity.
//     Without TLS every caller is an operator.
//   - An inline limit (Acquire, Charge, Restrict) never changes a key that
//     has a limit. A client's may define an absent key's limit unless the
//     Guard's ClientInlineLimits is InlineLimitsRefuse; then such a call
//     is PERMISSION_DENIED and creates nothing. A key without a limit that
//     sent no inline limit is NOT_FOUND ([ErrNoLimit]) whoever calls,
//     also beside items that lost theirs.
//   - An Acquire on an AcquireStream is served and answered as the unary
//     Acquire (its error as the answer's status, [StreamAnswer]), and a
//     Guard admits each one as a unary call (the stream itself holds no
//     in-flight slot); a stream has at most [MaxStreamInFlight] requests
//     in the Service at once, and a connection at most
//     [MaxStreamsPerConn] calls.
//   - A Guard never queues: an RPC beyond MaxInFlight is answered at once
//     with RESOURCE_EXHAUSTED and a retry hint (an [*OverloadedError]), a
//     connection that finishes its handshake beyond MaxConns is closed at
//     once. Connections in their handshake never hold one of MaxConns:
//     they have a cap of their own, at which a new one closes the oldest,
//     and one closed there never takes one of MaxConns. A connection
//     gives its slot back when it is closed, however gRPC closes it.
//     Every refusal, shed and displacement is counted ([Guard.Stats]) and
//     logged, a few lines at once and then one a second per kind, each
//     counting the lines left out.
//   - An outcome that may or may not have applied (leadership lost, no
//     quorum, shutdown, connection lost, deadline or cancellation) is
//     [ErrUnknownOutcome]; retrying with the same client_id and seq is always
//     safe, as the cluster returns the first answer.
//
// Package transport imports grpc, genproto's errdetails, protobuf,
// leaseholdpb, x/sys/unix (on Linux, for TCP_USER_TIMEOUT) and, from this
// module, internal/pki (identities), internal/connlimit and
// internal/ratelog; never cluster, fsm or hashicorp.
package transport
