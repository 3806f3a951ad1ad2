package main

import (
	"context"
	"errors"
	"fmt"

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
	return v, err
}
