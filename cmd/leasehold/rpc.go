package main

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// endpoints is a set of connections to a cluster's nodes, for the CLI.
type endpoints struct {
	addrs []string
	conns []*grpc.ClientConn
}

// dialSecure connects lazily to every address in list, with sec's
// certificate or in plain text.
func dialSecure(list string, sec *clientSecurity) (*endpoints, error) {
	files, err := sec.files()
	if err != nil {
		return nil, err
	}
	creds, err := dialOption(files)
	if err != nil {
		return nil, err
	}
	return dialWith(list, creds)
}

// dialEndpoints connects lazily to every address in list in plain text, as
// `leasehold cluster` does with the nodes it started without TLS.
func dialEndpoints(list string) (*endpoints, error) {
	return dialWith(list, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

func dialWith(list string, creds grpc.DialOption) (*endpoints, error) {
	addrs := splitList(list)
	if len(addrs) == 0 {
		return nil, errors.New("--endpoints: give at least one host:port")
	}
	e := &endpoints{addrs: addrs}
	for _, a := range addrs {
		cc, err := grpc.NewClient(a, creds)
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("endpoint %s: %w", a, err)
		}
		e.conns = append(e.conns, cc)
	}
	return e, nil
}

func (e *endpoints) Close() {
	for _, cc := range e.conns {
		cc.Close()
	}
}

// onLeader calls fn on each endpoint in turn until one is not a follower: the
// CLI's writes are rare, so trying in order is simpler than tracking ids.
func onLeader[T any](ctx context.Context, e *endpoints, fn func(context.Context, pb.LeaseholdClient) (T, error)) (T, error) {
	var zero T
	var errs []error
	for i, cc := range e.conns {
		v, err := fn(ctx, pb.NewLeaseholdClient(cc))
		err = transport.FromStatus(err)
		if err == nil {
			return v, nil
		}
		if !errors.Is(err, transport.ErrNotLeader) && !errors.Is(err, transport.ErrUnknownOutcome) {
			if errors.Is(err, transport.ErrPermissionDenied) {
				err = fmt.Errorf("%w; pass an operator's certificate (--cert and --key, or $%s and $%s)", err, envCert, envKey)
			}
			return zero, err
		}
		errs = append(errs, fmt.Errorf("%s: %w", e.addrs[i], err))
	}
	return zero, fmt.Errorf("no endpoint is the leader: %w", errors.Join(errs...))
}
