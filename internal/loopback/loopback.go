// Package loopback picks ports for the processes the test harnesses start
// on 127.0.0.1: the chaos harness, the benchmark's private cluster and the
// end-to-end tests.
package loopback

import (
	"fmt"
	"net"
)

// FreePorts returns n distinct loopback ports that were free a moment ago:
// each is bound on 127.0.0.1:0, all at once so they differ, then released.
// Another process may take one before the caller binds it; callers that can
// pass a bound listener instead should.
func FreePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free loopback port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
