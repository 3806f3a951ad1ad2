package transport

import (
	"log/slog"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// recordingListener hands every connection it accepts to conns as well.
type recordingListener struct {
	net.Listener
	conns chan net.Conn
}

func (l recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.conns <- c
	}
	return c, err
}

// TestAcceptedConnsHaveTCPUserTimeout is the regression test for the
// TCP_USER_TIMEOUT that gRPC sets from its keepalive Timeout only on a
// *net.TCPConn (grpc-go v1.85 internal/syscall.SetTCPUserTimeout), which
// the Guard's connections are not: without it, data the node sends to a
// client that vanished is retransmitted for about 15 minutes (the
// kernel's tcp_retries2) before the connection fails.
func TestAcceptedConnsHaveTCPUserTimeout(t *testing.T) {
	g, err := NewGuard(GuardConfig{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	rec := recordingListener{Listener: tcp, conns: make(chan net.Conn, 1)}
	ln := g.Listener(rec)
	client, err := net.Dial("tcp", tcp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	sc, err := (<-rec.conns).(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var ms int
	if err := sc.Control(func(fd uintptr) {
		ms, err = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
	}); err != nil {
		t.Fatal(err)
	}
	if err != nil {
		t.Fatalf("getsockopt TCP_USER_TIMEOUT: %v", err)
	}
	if want := keepaliveTimeout; time.Duration(ms)*time.Millisecond != want {
		t.Errorf("TCP_USER_TIMEOUT of an accepted connection = %dms; want %v, the keepalive Timeout", ms, want)
	}
}
