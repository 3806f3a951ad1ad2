package main

import (
	"errors"

	"github.com/leasehold/leasehold/internal/proc"
)

// dialEndpoints connects lazily to each address of an --endpoints list.
// The CLI's calls go through the returned proc.Admin: Status of every
// node, and proc.OnLeader for writes, retried on NotLeader until the
// command's timeout.
func dialEndpoints(list string) (*proc.Admin, error) {
	addrs := splitList(list)
	if len(addrs) == 0 {
		return nil, errors.New("--endpoints: give at least one host:port")
	}
	return proc.Dial(addrs)
}
