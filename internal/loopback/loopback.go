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

// Silent listens on a loopback port and accepts connections without ever
// answering on them, as a process stopped with SIGSTOP does (the kernel
// completes the handshake). It returns the address and stop, which closes
// the listener and every connection it accepted, and waits for that.
func Silent() (addr string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("listen on a loopback port: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	return ln.Addr().String(), func() { ln.Close(); <-done }, nil
}
