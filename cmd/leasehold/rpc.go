package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/leasehold/leasehold/internal/proc"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// dialSecure connects lazily to every address of an --endpoints list, with
// sec's certificate or in plain text. The CLI's calls go through the
// returned proc.Admin: Status of every node, and onLeader for writes.
func dialSecure(list string, sec *clientSecurity) (*proc.Admin, error) {
	files, err := sec.files()
	if err != nil {
		return nil, err
	}
	return dialWith(list, security(files))
}

// dialWith connects lazily to every address of an --endpoints list, as
// sec says.
func dialWith(list string, sec proc.Security) (*proc.Admin, error) {
	addrs := splitList(list)
	if len(addrs) == 0 {
		return nil, errors.New("--endpoints: give at least one host:port")
	}
	return proc.Dial(addrs, sec)
}

// onLeader is proc.OnLeader (retried on NotLeader and unknown outcomes until
// ctx ends), with a hint when the certificate lacks the role.
func onLeader[T any](ctx context.Context, e *proc.Admin, fn func(context.Context, pb.LeaseholdClient) (T, error)) (T, error) {
	v, err := proc.OnLeader(ctx, e, fn)
	if errors.Is(err, transport.ErrPermissionDenied) {
		err = fmt.Errorf("%w; pass an operator's certificate (--cert and --key, or $%s and $%s)", err, envCert, envKey)
	}
	return v, withConnHint(err)
}

// connHints are the failures that say which flag is wrong, or what is
// wrong with the cluster, and what to do. gRPC reports connection failures
// as text only, hence the substrings.
var connHints = []struct{ says, hint string }{
	// A plain-text node and a gossip port both answer a TLS hello with
	// bytes that are not TLS, and gRPC reports both the same way.
	{"first record does not look like a TLS handshake",
		"the port does not speak TLS: if the node serves plain text (serve --insecure), pass --insecure; " +
			"if it is not a client address (a gossip port?), --endpoints takes the nodes' client addresses " +
			"(serve --grpc-addr; 7101-7103 for make cluster)"},
	{"error reading server preface",
		"the port did not speak gRPC in plain text: if the nodes serve TLS, drop --insecure and pass --ca, --cert and --key; " +
			"--endpoints takes the nodes' client addresses (serve --grpc-addr; 7101-7103 for make cluster)"},
	{"missing selected ALPN property",
		"the port serves TLS but not the client API (a Raft or HTTP port?): " +
			"--endpoints takes the nodes' client addresses (serve --grpc-addr; 7101-7103 for make cluster)"},
	{"certificate signed by unknown authority",
		"the node's certificate is not signed by the CA you passed: pass the cluster's CA (--ca or $" + envCA + ")"},
	{"no leader is known",
		"the nodes know no leader: an election is under way, or too few voters are up for a quorum " +
			"(leasehold status shows each node's state; README, \"Recover from a lost quorum\")"},
	{"no answer within",
		"a node that takes that long may have no leader (an election, or too few voters up for a quorum) or be overloaded: " +
			"leasehold status shows each node's state"},
	{"connection refused",
		"nothing listens there: is the node running, and does --endpoints name the nodes' client addresses (serve --grpc-addr)?"},
}

// withConnHint returns err with the hint of the first connection failure
// it shows, or err as it is.
func withConnHint(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	for _, h := range connHints {
		if strings.Contains(msg, h.says) {
			return fmt.Errorf("%w\nhint: %s", err, h.hint)
		}
	}
	return err
}
