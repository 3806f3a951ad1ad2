//go:build !linux

package transport

import (
	"net"
	"time"
)

// setUserTimeout does nothing: TCP_USER_TIMEOUT is Linux's (gRPC sets it
// nowhere else either).
func setUserTimeout(net.Conn, time.Duration) error { return nil }
