package transport_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/leasehold/leasehold/transport"
)

// sentinels are every error a client may match; each decoded error matches
// exactly the ones its row names and no other.
var sentinels = []error{
	transport.ErrNotLeader,
	transport.ErrNoLimit,
	transport.ErrStale,
	transport.ErrUnknownOutcome,
	transport.ErrInvalid,
	transport.ErrPermissionDenied,
	transport.ErrUnauthenticated,
	transport.ErrOverloaded,
	transport.ErrFull,
	transport.ErrUpgradeNeeded,
	context.Canceled,
	context.DeadlineExceeded,
}

// checkMatches fails unless err matches (errors.Is) exactly the sentinels in want.
func checkMatches(t *testing.T, err error, want ...error) {
	t.Helper()
	for _, s := range sentinels {
		isWanted := false
		for _, w := range want {
			isWanted = isWanted || w == s
		}
		if got := errors.Is(err, s); got != isWanted {
			t.Errorf("errors.Is(%v, %v) = %v, want %v", err, s, got, isWanted)
		}
	}
}

// TestStatusRoundTrip sends every kind of Service error through ToStatus and
// FromStatus, and checks the code on the wire and what a client can match.
func TestStatusRoundTrip(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		err   error
		code  codes.Code
		match []error
		check func(t *testing.T, got error) // extra checks; optional
	}{
		{name: "invalid error", code: codes.InvalidArgument, match: []error{transport.ErrInvalid},
			err: &transport.InvalidError{Field: "items[1].key", Reason: "key is 600 bytes; the most is 512"},
			check: func(t *testing.T, got error) {
				var ie *transport.InvalidError
				if !errors.As(got, &ie) || ie.Field != "items[1].key" || ie.Reason != "key is 600 bytes; the most is 512" {
					t.Errorf("got %#v, want the same field and reason", got)
				}
				if want := "invalid items[1].key: key is 600 bytes; the most is 512"; got.Error() != want {
					t.Errorf("Error() = %q, want %q", got.Error(), want)
				}
			}},
		{name: "wrapped invalid error", code: codes.InvalidArgument, match: []error{transport.ErrInvalid},
			err: fmt.Errorf("acquire: %w", &transport.InvalidError{Field: "ttl_ns", Reason: "too long"}),
			check: func(t *testing.T, got error) {
				var ie *transport.InvalidError
				if !errors.As(got, &ie) || ie.Field != "ttl_ns" || ie.Reason != "too long" {
					t.Errorf("got %#v, want field ttl_ns and reason %q", got, "too long")
				}
			}},
		{name: "invalid sentinel", code: codes.InvalidArgument, match: []error{transport.ErrInvalid},
			err: fmt.Errorf("concurrency key needs a lease: %w", transport.ErrInvalid),
			check: func(t *testing.T, got error) {
				var ie *transport.InvalidError
				if !errors.As(got, &ie) || ie.Field != "" || ie.Reason != "concurrency key needs a lease: invalid request" {
					t.Errorf("got %#v, want no field and the message as reason", got)
				}
			}},
		{name: "not leader with leader", code: codes.FailedPrecondition, match: []error{transport.ErrNotLeader},
			err: &transport.NotLeaderError{LeaderID: "n2", LeaderRaftAddr: "10.0.0.2:7000"},
			check: func(t *testing.T, got error) {
				var nl *transport.NotLeaderError
				if !errors.As(got, &nl) || *nl != (transport.NotLeaderError{LeaderID: "n2", LeaderRaftAddr: "10.0.0.2:7000"}) {
					t.Errorf("got %#v, want leader n2 at 10.0.0.2:7000", got)
				}
			}},
		{name: "not leader, no leader known", code: codes.FailedPrecondition, match: []error{transport.ErrNotLeader},
			err: fmt.Errorf("forward: %w", &transport.NotLeaderError{}),
			check: func(t *testing.T, got error) {
				var nl *transport.NotLeaderError
				if !errors.As(got, &nl) || *nl != (transport.NotLeaderError{}) {
					t.Errorf("got %#v, want an empty *NotLeaderError", got)
				}
			}},
		{name: "not leader sentinel", code: codes.FailedPrecondition, match: []error{transport.ErrNotLeader},
			err: transport.ErrNotLeader,
			check: func(t *testing.T, got error) {
				var nl *transport.NotLeaderError
				if !errors.As(got, &nl) {
					t.Errorf("got %#v, want a *NotLeaderError", got)
				}
			}},
		{name: "upgrade needed", code: codes.FailedPrecondition, match: []error{transport.ErrUpgradeNeeded},
			err: fmt.Errorf("delete limits: %w: server n3 runs an older build", transport.ErrUpgradeNeeded),
			check: func(t *testing.T, got error) {
				if !strings.Contains(got.Error(), "server n3 runs an older build") {
					t.Errorf("Error() = %q, want the server's reason", got.Error())
				}
			}},
		{name: "no limit", code: codes.NotFound, match: []error{transport.ErrNoLimit},
			err: fmt.Errorf("key %q: %w", "gpt-4o", transport.ErrNoLimit)},
		{name: "no limit naming the key", code: codes.NotFound, match: []error{transport.ErrNoLimit},
			err: fmt.Errorf("acquire: %w", &transport.NoLimitError{Key: "gpt-4o", Reason: "key gpt-4o has no limit"}),
			check: func(t *testing.T, got error) {
				var nl *transport.NoLimitError
				if !errors.As(got, &nl) || nl.Key != "gpt-4o" {
					t.Errorf("got %#v, want a *NoLimitError for gpt-4o", got)
				}
			}},
		{name: "no limit, key unknown", code: codes.NotFound, match: []error{transport.ErrNoLimit},
			err: &transport.NoLimitError{Reason: "key gpt-4o has no limit"},
			check: func(t *testing.T, got error) {
				var nl *transport.NoLimitError
				if errors.As(got, &nl) {
					t.Errorf("got %#v, want no *NoLimitError without a key", got)
				}
				if want := "key has no limit: key gpt-4o has no limit"; got.Error() != want {
					t.Errorf("Error() = %q, want %q", got.Error(), want)
				}
			}},
		{name: "stale", code: codes.Aborted, match: []error{transport.ErrStale},
			err: transport.ErrStale},
		{name: "unknown outcome", code: codes.Unavailable, match: []error{transport.ErrUnknownOutcome},
			err: fmt.Errorf("%w: leadership lost while committing", transport.ErrUnknownOutcome),
			check: func(t *testing.T, got error) {
				if want := "outcome unknown: leadership lost while committing"; got.Error() != want {
					t.Errorf("Error() = %q, want %q (the server's message, once)", got.Error(), want)
				}
			}},
		{name: "canceled", code: codes.Canceled, match: []error{context.Canceled, transport.ErrUnknownOutcome},
			err: context.Canceled},
		{name: "deadline", code: codes.DeadlineExceeded,
			match: []error{context.DeadlineExceeded, transport.ErrUnknownOutcome},
			err:   fmt.Errorf("wait for commit: %w", context.DeadlineExceeded)},
		{name: "deadline while the outcome is unknown", code: codes.DeadlineExceeded,
			match: []error{context.DeadlineExceeded, transport.ErrUnknownOutcome},
			err:   fmt.Errorf("%w: %w", transport.ErrUnknownOutcome, context.DeadlineExceeded)},
		{name: "permission denied", code: codes.PermissionDenied, match: []error{transport.ErrPermissionDenied},
			err: fmt.Errorf("%w: client/app may not call SetLimit", transport.ErrPermissionDenied),
			check: func(t *testing.T, got error) {
				if want := "permission denied: client/app may not call SetLimit"; got.Error() != want {
					t.Errorf("Error() = %q, want %q", got.Error(), want)
				}
			}},
		{name: "unauthenticated", code: codes.Unauthenticated, match: []error{transport.ErrUnauthenticated},
			err: fmt.Errorf("%w: no verified certificate", transport.ErrUnauthenticated)},
		{name: "overloaded with a hint", code: codes.ResourceExhausted, match: []error{transport.ErrOverloaded},
			err: &transport.OverloadedError{RetryAfter: 250 * time.Millisecond},
			check: func(t *testing.T, got error) {
				var oe *transport.OverloadedError
				if !errors.As(got, &oe) || oe.RetryAfter != 250*time.Millisecond {
					t.Errorf("got %#v, want an *OverloadedError with RetryAfter 250ms", got)
				}
			}},
		{name: "overloaded sentinel", code: codes.ResourceExhausted, match: []error{transport.ErrOverloaded},
			err: fmt.Errorf("queue full: %w", transport.ErrOverloaded)},
		{name: "full", code: codes.ResourceExhausted, match: []error{transport.ErrFull},
			err: &transport.FullError{Resource: transport.FullKeys, Reason: `the cluster holds 10 keys, the most --max-keys allows; key "k" is new`},
			check: func(t *testing.T, got error) {
				var fe *transport.FullError
				if !errors.As(got, &fe) || fe.Resource != transport.FullKeys ||
					fe.Reason != `the cluster holds 10 keys, the most --max-keys allows; key "k" is new` {
					t.Errorf("got %#v, want a *FullError with the same resource and reason", got)
				}
				if want := `cluster full: the cluster holds 10 keys, the most --max-keys allows; key "k" is new`; got.Error() != want {
					t.Errorf("Error() = %q, want %q", got.Error(), want)
				}
			}},
		{name: "full sentinel", code: codes.ResourceExhausted, match: []error{transport.ErrFull},
			err: fmt.Errorf("%w: no room", transport.ErrFull)},
		{name: "anything else", code: codes.Internal, match: nil,
			err: errors.New("disk on fire"),
			check: func(t *testing.T, got error) {
				if want := "rpc failed (Internal): disk on fire"; got.Error() != want {
					t.Errorf("Error() = %q, want %q", got.Error(), want)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			wire := transport.ToStatus(tt.err)
			st, ok := status.FromError(wire)
			if !ok {
				t.Fatalf("ToStatus(%v) = %v, not a status", tt.err, wire)
			}
			if st.Code() != tt.code {
				t.Errorf("ToStatus(%v) code = %v, want %v", tt.err, st.Code(), tt.code)
			}
			if st.Message() != tt.err.Error() {
				t.Errorf("ToStatus(%v) message = %q, want the error's text", tt.err, st.Message())
			}
			got := transport.FromStatus(wire)
			checkMatches(t, got, tt.match...)
			if tt.check != nil {
				tt.check(t, got)
			}
			// A decoded error maps to the same code again, as a node that
			// forwards to the leader relies on.
			if again := status.Code(transport.ToStatus(got)); again != tt.code {
				t.Errorf("ToStatus(FromStatus(...)) code = %v, want %v", again, tt.code)
			}
		})
	}
}

// TestStatusNil checks that no error stays no error both ways.
func TestStatusNil(t *testing.T) {
	t.Parallel()
	if err := transport.ToStatus(nil); err != nil {
		t.Errorf("ToStatus(nil) = %v", err)
	}
	if err := transport.FromStatus(nil); err != nil {
		t.Errorf("FromStatus(nil) = %v", err)
	}
}

// TestFromStatusForeign decodes statuses that no Leasehold server sent: the
// gRPC layer's own (a connection error), ones without details, and errors
// with no status at all.
func TestFromStatusForeign(t *testing.T) {
	t.Parallel()
	plain := errors.New("not from grpc")
	tests := []struct {
		name  string
		err   error
		match []error
		check func(t *testing.T, got error)
	}{
		{name: "connection error", match: []error{transport.ErrUnknownOutcome},
			err: status.Error(codes.Unavailable, "connection error: desc = \"transport: connection refused\""),
			check: func(t *testing.T, got error) {
				if want := `outcome unknown: connection error: desc = "transport: connection refused"`; got.Error() != want {
					t.Errorf("Error() = %q, want %q", got.Error(), want)
				}
			}},
		{name: "client-side deadline", match: []error{context.DeadlineExceeded, transport.ErrUnknownOutcome},
			err: status.Error(codes.DeadlineExceeded, "context deadline exceeded")},
		{name: "invalid without detail", match: []error{transport.ErrInvalid},
			err: status.Error(codes.InvalidArgument, "grpc: bad thing"),
			check: func(t *testing.T, got error) {
				var ie *transport.InvalidError
				if !errors.As(got, &ie) || ie.Field != "" || ie.Reason != "grpc: bad thing" {
					t.Errorf("got %#v, want the message as reason", got)
				}
			}},
		{name: "failed precondition without detail", match: []error{transport.ErrNotLeader},
			err: status.Error(codes.FailedPrecondition, "not the leader")},
		{name: "unimplemented", match: nil,
			err: status.Error(codes.Unimplemented, "unknown method Frobnicate")},
		{name: "resource exhausted", match: nil,
			err: status.Error(codes.ResourceExhausted, "message larger than max")},
		{name: "not a status", match: nil, err: plain,
			check: func(t *testing.T, got error) {
				if got != plain {
					t.Errorf("FromStatus(%v) = %v, want it unchanged", plain, got)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := transport.FromStatus(tt.err)
			if got == nil {
				t.Fatalf("FromStatus(%v) = nil", tt.err)
			}
			checkMatches(t, got, tt.match...)
			if tt.check != nil {
				tt.check(t, got)
			}
		})
	}
}

// TestErrorText checks the messages users read.
func TestErrorText(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err  error
		want string
	}{
		{&transport.InvalidError{Field: "seq", Reason: "seq is 0"}, "invalid seq: seq is 0"},
		{&transport.InvalidError{Reason: "lease 7 belongs to another client"}, "invalid request: lease 7 belongs to another client"},
		{&transport.NotLeaderError{}, "not the leader; no leader is known"},
		{&transport.NotLeaderError{LeaderID: "n1", LeaderRaftAddr: "127.0.0.1:7001"}, `not the leader; the leader is "n1" at 127.0.0.1:7001`},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
}
