package transport

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// The errors a Service returns and a client gets back from [FromStatus]. Match
// them with errors.Is (and the typed ones with errors.As), never by their text.
//
// A denial is not an error: AcquireResponse.allowed is false. An error means
// the cluster could not decide.
var (
	// ErrNotLeader: the node that answered is not the leader. The error is
	// usually a *NotLeaderError naming the leader. Nothing was applied; send
	// the request to the leader.
	ErrNotLeader = errors.New("not the leader")

	// ErrNoLimit: an Acquire named a key that has no limit, and the item sent
	// none. Nothing was applied. Send a limit with the item or SetLimit first.
	// A *NoLimitError names the key.
	ErrNoLimit = errors.New("key has no limit")

	// ErrStale: the request's seq is older than every result the cluster
	// keeps for its client_id, so the cluster cannot tell whether it applied
	// and did not apply it again. A client that retries only recent requests
	// never sees it.
	ErrStale = errors.New("seq is older than the results the cluster keeps")

	// ErrUnknownOutcome: the request may or may not have been applied:
	// leadership was lost, there was no quorum, the node was shutting down or
	// could not be reached. Retry with the same client_id and seq: the
	// cluster's dedup table makes the retry return the first answer if there
	// was one.
	//
	// A canceled or timed-out call is an unknown outcome too: [FromStatus]
	// returns an error that matches both context.Canceled (or
	// context.DeadlineExceeded) and ErrUnknownOutcome.
	ErrUnknownOutcome = errors.New("outcome unknown")

	// ErrInvalid: a request field is wrong. The error is usually an
	// *InvalidError naming the field. Nothing was applied; retrying the same
	// request fails the same way.
	ErrInvalid = errors.New("invalid request")

	// ErrPermissionDenied: the caller's certificate names a role that may
	// not make this call (a client calling SetLimit). Nothing was applied;
	// retrying fails the same way until the caller has an operator's
	// certificate.
	ErrPermissionDenied = errors.New("permission denied")

	// ErrUnauthenticated: the call carried no identity the node accepts (a
	// verified certificate without a Leasehold identity). Nothing was
	// applied.
	ErrUnauthenticated = errors.New("unauthenticated")

	// ErrOverloaded: the node shed the request before serving it, as it had
	// as many requests in flight as it takes. The error is usually an
	// *OverloadedError saying when to retry. Nothing was applied; retry
	// after the hint, with the same client_id and seq.
	ErrOverloaded = errors.New("node overloaded")

	// ErrFull: the cluster holds as many keys, or client sessions, as its
	// operator allows (leasehold serve --max-keys, --max-sessions), and the
	// request would have added one: it named a key the cluster does not
	// hold, or came from a client_id the cluster keeps no session for.
	// Nothing was applied. The error is usually a *FullError. It is not
	// transient in seconds: room comes back as idle keys are forgotten
	// (once their limits refill) and sessions expire (10 minutes after
	// their client's last request), or when the operator raises the cap,
	// so a caller should back off for seconds, not retry at once.
	ErrFull = errors.New("cluster full")

	// ErrUpgradeNeeded: the request needs a command that a server of the
	// cluster runs a build too old to apply (it would stop on it), so the
	// leader did not send it. Nothing was applied. The message names the
	// servers; upgrade them, then retry.
	ErrUpgradeNeeded = errors.New("cluster needs an upgrade")
)

// CommandLevelViolation is the type of the PreconditionFailure violation
// that carries ErrUpgradeNeeded on the wire.
const CommandLevelViolation = "leasehold.v1.command_level"

// FullError is ErrFull naming what is at its cap. It travels as a
// google.rpc.QuotaFailure detail of a RESOURCE_EXHAUSTED status, with no
// RetryInfo: that is ErrOverloaded's, a shed request worth retrying in
// milliseconds, and clients that know only it would retry a full cluster
// as fast.
type FullError struct {
	// Resource is what the cluster holds as much of as it may:
	// FullKeys or FullSessions.
	Resource string
	// Reason says how much the cluster holds, which cap that is, what the
	// request would have added and what to do, in words.
	Reason string
}

// The Resources of a FullError, the subjects of its QuotaFailure.
const (
	FullKeys     = "leasehold.v1.keys"
	FullSessions = "leasehold.v1.sessions"
)

// Error reads "cluster full: <reason>".
func (e *FullError) Error() string { return ErrFull.Error() + ": " + e.Reason }

// Is reports whether target is ErrFull.
func (e *FullError) Is(target error) bool { return target == ErrFull }

// OverloadedError is ErrOverloaded with the node's hint of when to retry. It
// travels as a google.rpc.RetryInfo detail of a RESOURCE_EXHAUSTED status.
type OverloadedError struct {
	// RetryAfter is how long the node asks callers to wait before
	// retrying; 0 if it gave no hint.
	RetryAfter time.Duration
}

// Error reads "node overloaded; retry after <RetryAfter>".
func (e *OverloadedError) Error() string {
	if e.RetryAfter <= 0 {
		return ErrOverloaded.Error()
	}
	return fmt.Sprintf("%v; retry after %v", ErrOverloaded, e.RetryAfter)
}

// Is reports whether target is ErrOverloaded.
func (e *OverloadedError) Is(target error) bool { return target == ErrOverloaded }

// NotLeaderError is ErrNotLeader with the leader this node knows of. It
// travels as a leaseholdpb.NotLeader detail of a FAILED_PRECONDITION status.
type NotLeaderError struct {
	// LeaderID is the leader's node id; empty while no leader is known.
	LeaderID string
	// LeaderRaftAddr is the leader's Raft address; empty while no leader is
	// known.
	LeaderRaftAddr string
	// LeaderClientAddr is the leader's client API (gRPC) address, which a
	// client can dial straight away; empty while no leader is known or when
	// the node does not know it (membership off).
	LeaderClientAddr string
}

// Error describes the error and the leader, if one is known.
func (e *NotLeaderError) Error() string {
	if e.LeaderID == "" && e.LeaderRaftAddr == "" {
		return "not the leader; no leader is known"
	}
	if e.LeaderClientAddr != "" {
		return fmt.Sprintf("not the leader; the leader is %q at %s (clients: %s)", e.LeaderID, e.LeaderRaftAddr, e.LeaderClientAddr)
	}
	return fmt.Sprintf("not the leader; the leader is %q at %s", e.LeaderID, e.LeaderRaftAddr)
}

// Is reports whether target is ErrNotLeader.
func (e *NotLeaderError) Is(target error) bool { return target == ErrNotLeader }

// NoLimitError is ErrNoLimit naming the key found without a limit: the
// first item of the request, in order, whose key had none and that sent
// none. It travels as a google.rpc.ResourceInfo detail of a NOT_FOUND
// status (resource type NoLimitResource, the key as its name). Key is ""
// when the cluster could not tell (an answer its dedup table repeated);
// then the status carries no detail and FromStatus returns an error that
// matches ErrNoLimit only.
type NoLimitError struct {
	Key string
	// Reason says what is missing and what to do, in words.
	Reason string
}

// NoLimitResource is the resource type of a NoLimitError's ResourceInfo.
const NoLimitResource = "leasehold.v1.Key"

// Error reads "key has no limit: <reason>".
func (e *NoLimitError) Error() string { return ErrNoLimit.Error() + ": " + e.Reason }

// Is reports whether target is ErrNoLimit.
func (e *NoLimitError) Is(target error) bool { return target == ErrNoLimit }

// InvalidError is ErrInvalid with the field at fault and what is wrong with
// it. It travels as a google.rpc.BadRequest field violation of an
// INVALID_ARGUMENT status, so both parts come back intact.
type InvalidError struct {
	// Field is the request field at fault, as a path of proto field names
	// ("items[1].key", "limit.period_ns"); empty when no one field is.
	Field string
	// Reason says what is wrong and what is allowed.
	Reason string
}

// Error reads "invalid <field>: <reason>", or "invalid request: <reason>"
// when no field is named.
func (e *InvalidError) Error() string {
	field := e.Field
	if field == "" {
		field = "request"
	}
	return "invalid " + field + ": " + e.Reason
}

// Is reports whether target is ErrInvalid.
func (e *InvalidError) Is(target error) bool { return target == ErrInvalid }

// invalidf returns an *InvalidError for field with a formatted reason.
func invalidf(field, format string, args ...any) *InvalidError {
	return &InvalidError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// ToStatus maps an error of a Service to the gRPC status error the server
// sends; [FromStatus] is its inverse. The message is err.Error().
//
//	nil                               nil
//	*InvalidError, ErrInvalid         INVALID_ARGUMENT (BadRequest detail)
//	*NotLeaderError, ErrNotLeader     FAILED_PRECONDITION (NotLeader detail)
//	*NoLimitError with a Key          NOT_FOUND (ResourceInfo detail)
//	ErrNoLimit                        NOT_FOUND
//	ErrStale                          ABORTED
//	context.Canceled                  CANCELED
//	context.DeadlineExceeded          DEADLINE_EXCEEDED
//	ErrUnknownOutcome                 UNAVAILABLE
//	ErrPermissionDenied               PERMISSION_DENIED
//	ErrUnauthenticated                UNAUTHENTICATED
//	*OverloadedError, ErrOverloaded   RESOURCE_EXHAUSTED (RetryInfo detail)
//	*FullError                        RESOURCE_EXHAUSTED (QuotaFailure detail)
//	ErrFull                           RESOURCE_EXHAUSTED (QuotaFailure detail, no subject)
//	anything else                     INTERNAL
//
// The first row that matches (errors.Is or errors.As) wins, so an error that
// wraps both a context error and ErrUnknownOutcome maps to the context code;
// clients treat both as an unknown outcome.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	var invalid *InvalidError
	var notLeader *NotLeaderError
	var overloaded *OverloadedError
	var noLimit *NoLimitError
	var full *FullError
	switch {
	case errors.As(err, &invalid):
		return withDetail(codes.InvalidArgument, msg, badRequest(invalid))
	case errors.Is(err, ErrInvalid):
		return withDetail(codes.InvalidArgument, msg, badRequest(&InvalidError{Reason: msg}))
	case errors.As(err, &notLeader):
		return withDetail(codes.FailedPrecondition, msg,
			&pb.NotLeader{LeaderId: notLeader.LeaderID, LeaderRaftAddr: notLeader.LeaderRaftAddr,
				LeaderClientAddr: notLeader.LeaderClientAddr})
	case errors.Is(err, ErrNotLeader):
		return withDetail(codes.FailedPrecondition, msg, &pb.NotLeader{})
	case errors.Is(err, ErrUpgradeNeeded):
		return withDetail(codes.FailedPrecondition, msg, &errdetails.PreconditionFailure{
			Violations: []*errdetails.PreconditionFailure_Violation{{Type: CommandLevelViolation, Description: msg}}})
	case errors.As(err, &noLimit) && noLimit.Key != "":
		return withDetail(codes.NotFound, msg, &errdetails.ResourceInfo{ResourceType: NoLimitResource, ResourceName: noLimit.Key,
			Description: "no limit"})
	case errors.Is(err, ErrNoLimit):
		return status.Error(codes.NotFound, msg)
	case errors.Is(err, ErrStale):
		return status.Error(codes.Aborted, msg)
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, msg)
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, msg)
	case errors.Is(err, ErrUnknownOutcome):
		return status.Error(codes.Unavailable, msg)
	case errors.Is(err, ErrPermissionDenied):
		return status.Error(codes.PermissionDenied, msg)
	case errors.Is(err, ErrUnauthenticated):
		return status.Error(codes.Unauthenticated, msg)
	case errors.As(err, &overloaded):
		return withDetail(codes.ResourceExhausted, msg, &errdetails.RetryInfo{RetryDelay: durationpb.New(overloaded.RetryAfter)})
	case errors.Is(err, ErrOverloaded):
		return withDetail(codes.ResourceExhausted, msg, &errdetails.RetryInfo{RetryDelay: durationpb.New(0)})
	case errors.As(err, &full):
		return withDetail(codes.ResourceExhausted, msg, quotaFailure(full.Resource, full.Reason))
	case errors.Is(err, ErrFull):
		return withDetail(codes.ResourceExhausted, msg, quotaFailure("", msg))
	}
	return status.Error(codes.Internal, msg)
}

// badRequest encodes e as a BadRequest with one field violation.
func badRequest(e *InvalidError) *errdetails.BadRequest {
	return &errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
		{Field: e.Field, Description: e.Reason},
	}}
}

// quotaFailure encodes a FullError as a QuotaFailure with one violation.
func quotaFailure(resource, reason string) *errdetails.QuotaFailure {
	return &errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{Subject: resource, Description: reason}}}
}

// withDetail returns a status error with one detail attached. Attaching fails
// only if detail cannot be marshaled, which generated messages always can.
func withDetail(c codes.Code, msg string, detail protoadapt.MessageV1) error {
	st := status.New(c, msg)
	if d, err := st.WithDetails(detail); err == nil {
		st = d
	}
	return st.Err()
}

// FromStatus maps an error returned by a Leasehold RPC back to the Go errors
// of this package; it is the inverse of [ToStatus]. Clients match the result
// with errors.Is and errors.As only:
//
//	INVALID_ARGUMENT     *InvalidError (Field and Reason from the detail); Is ErrInvalid
//	FAILED_PRECONDITION  *NotLeaderError (from the detail); Is ErrNotLeader
//	FAILED_PRECONDITION  Is ErrUpgradeNeeded
//	  with PreconditionFailure of type CommandLevelViolation
//	NOT_FOUND            *NoLimitError (Key from the ResourceInfo detail), or without it
//	                     an error that Is ErrNoLimit
//	ABORTED              Is ErrStale
//	UNAVAILABLE          Is ErrUnknownOutcome (from the server, or a connection error)
//	CANCELED             Is context.Canceled and ErrUnknownOutcome
//	DEADLINE_EXCEEDED    Is context.DeadlineExceeded and ErrUnknownOutcome
//	PERMISSION_DENIED    Is ErrPermissionDenied
//	UNAUTHENTICATED      Is ErrUnauthenticated
//	RESOURCE_EXHAUSTED   *OverloadedError (RetryAfter from the RetryInfo detail); Is ErrOverloaded
//	  with RetryInfo
//	RESOURCE_EXHAUSTED   *FullError (Resource and Reason from the detail); Is ErrFull
//	  with QuotaFailure
//
// A deadline or cancellation may strike after the cluster applied the
// request, so it counts as an unknown outcome: a client that still wants the
// answer retries with the same client_id and seq.
//
// nil stays nil, an error that carries no gRPC status is returned unchanged,
// and any other code (INTERNAL, UNIMPLEMENTED, RESOURCE_EXHAUSTED without a
// RetryInfo or QuotaFailure, which gRPC itself answers for a message above its size limit,
// ...) becomes an error with the server's message that matches none of the
// errors above: the request failed and a retry is not expected to help.
func FromStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	msg := st.Message()
	switch st.Code() {
	case codes.InvalidArgument:
		for _, d := range st.Details() {
			if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 {
				v := br.GetFieldViolations()[0]
				return &InvalidError{Field: v.GetField(), Reason: v.GetDescription()}
			}
		}
		return &InvalidError{Reason: msg}
	case codes.FailedPrecondition:
		for _, d := range st.Details() {
			if nl, ok := d.(*pb.NotLeader); ok {
				return &NotLeaderError{LeaderID: nl.GetLeaderId(), LeaderRaftAddr: nl.GetLeaderRaftAddr(),
					LeaderClientAddr: nl.GetLeaderClientAddr()}
			}
			if pf, ok := d.(*errdetails.PreconditionFailure); ok && len(pf.GetViolations()) > 0 &&
				pf.GetViolations()[0].GetType() == CommandLevelViolation {
				return remote(msg, ErrUpgradeNeeded)
			}
		}
		return &NotLeaderError{}
	case codes.NotFound:
		for _, d := range st.Details() {
			if ri, ok := d.(*errdetails.ResourceInfo); ok && ri.GetResourceType() == NoLimitResource {
				return &NoLimitError{Key: ri.GetResourceName(), Reason: strings.TrimPrefix(msg, ErrNoLimit.Error()+": ")}
			}
		}
		return remote(msg, ErrNoLimit)
	case codes.Aborted:
		return remote(msg, ErrStale)
	case codes.Unavailable:
		return remote(msg, ErrUnknownOutcome)
	case codes.Canceled:
		return remote(msg, context.Canceled, ErrUnknownOutcome)
	case codes.DeadlineExceeded:
		return remote(msg, context.DeadlineExceeded, ErrUnknownOutcome)
	case codes.PermissionDenied:
		return remote(msg, ErrPermissionDenied)
	case codes.Unauthenticated:
		return remote(msg, ErrUnauthenticated)
	case codes.ResourceExhausted:
		for _, d := range st.Details() {
			if ri, ok := d.(*errdetails.RetryInfo); ok {
				return &OverloadedError{RetryAfter: max(0, ri.GetRetryDelay().AsDuration())}
			}
		}
		for _, d := range st.Details() {
			if qf, ok := d.(*errdetails.QuotaFailure); ok && len(qf.GetViolations()) > 0 {
				v := qf.GetViolations()[0]
				return &FullError{Resource: v.GetSubject(), Reason: strings.TrimPrefix(v.GetDescription(), ErrFull.Error()+": ")}
			}
		}
	}
	return &remoteError{msg: fmt.Sprintf("rpc failed (%v): %s", st.Code(), msg)}
}

// remoteError is an error decoded from a status: it reads as the server's
// message and matches the errors in is.
type remoteError struct {
	msg string
	is  []error
}

func (e *remoteError) Error() string   { return e.msg }
func (e *remoteError) Unwrap() []error { return e.is }

// remote returns a remoteError for msg matching targets. The message starts
// with the first target's text, which a server's wrapped error already does.
func remote(msg string, targets ...error) error {
	if prefix := targets[0].Error(); !strings.HasPrefix(msg, prefix) {
		msg = prefix + ": " + msg
	}
	return &remoteError{msg: msg, is: targets}
}
