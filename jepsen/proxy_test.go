//go:build unix

package jepsen

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// echoServer answers each line with the same line, until the test ends.
func echoServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

// roundTrip writes a line on c and reads one back, waiting at most wait.
func roundTrip(c net.Conn, r *bufio.Reader, line string, wait time.Duration) (string, error) {
	c.SetDeadline(time.Now().Add(wait))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	got, err := r.ReadString('\n')
	return got, err
}

func TestLinkForwardsCutsAndHeals(t *testing.T) {
	l, err := newLink("c1>n1", echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	c, err := net.Dial("tcp", l.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if got, err := roundTrip(c, r, "up", 10*time.Second); err != nil || got != "up\n" {
		t.Fatalf("through an up link: %q, %v", got, err)
	}

	l.setCut(true)
	// A cut link is silent: no answer and no reset. (The wait is the
	// bound on how long silence is checked, not synchronisation.)
	if got, err := roundTrip(c, r, "cut", 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("through a cut link: %q, %v; want a timeout", got, err)
	}
	c2, err := net.Dial("tcp", l.addr()) // a new connection is accepted and swallowed
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	r2 := bufio.NewReader(c2)
	if got, err := roundTrip(c2, r2, "new while cut", 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("new connection through a cut link: %q, %v; want a timeout", got, err)
	}

	// Heal only once the link has read "cut" from c and accepted c2 while
	// cut: the 300ms reads above bound how long silence is checked, not how
	// long the proxy's goroutines take to run. A starved machine can leave
	// "cut" unread in the kernel, or c2 unaccepted, past them; healing then
	// forwards "cut" as if nothing was cut, or accepts c2 as new, and
	// neither connection is closed.
	waitLost(t, l, 2)
	l.setCut(false)
	// Both connections lost bytes: healing closes them.
	for i, conn := range []net.Conn{c, c2} {
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("connection %d after heal: read err %v; want it closed", i+1, err)
		}
	}
	c3, err := net.Dial("tcp", l.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	if got, err := roundTrip(c3, bufio.NewReader(c3), "healed", 10*time.Second); err != nil || got != "healed\n" {
		t.Fatalf("through a healed link: %q, %v", got, err)
	}
}

// waitLost waits, at most 10s, until l carries n connections and every one
// of them lost bytes to the cut.
func waitLost(t *testing.T, l *link, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.mu.Lock()
		carried, lost := len(l.mu.pipes), 0
		for p := range l.mu.pipes {
			if p.lost {
				lost++
			}
		}
		l.mu.Unlock()
		if carried == n && lost == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s the cut link carries %d connections, %d of them with lost bytes; want %d and %d", carried, lost, n, n)
		}
		time.Sleep(time.Millisecond) // polls the link's state; bounded by the deadline
	}
}

// TestNetworkCutIsDirected: cutting a>b leaves b>a up.
func TestNetworkCutIsDirected(t *testing.T) {
	target := echoServer(t)
	var nw network
	defer nw.close()
	ab, err := nw.add("a", "b", target)
	if err != nil {
		t.Fatal(err)
	}
	ba, err := nw.add("b", "a", target)
	if err != nil {
		t.Fatal(err)
	}
	names, err := nw.cut([]string{"a"}, []string{"a", "b"}, true)
	if err != nil || len(names) != 1 || names[0] != "a>b" {
		t.Fatalf("cut = %v, %v; want [a>b]", names, err)
	}
	if !ab.isCut() || ba.isCut() {
		t.Fatalf("a>b cut %v, b>a cut %v; want true, false", ab.isCut(), ba.isCut())
	}
	c, err := net.Dial("tcp", ba.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := roundTrip(c, bufio.NewReader(c), "b to a", 10*time.Second); err != nil || got != "b to a\n" {
		t.Fatalf("b>a while a>b is cut: %q, %v", got, err)
	}
	if healed := nw.healAll(); len(healed) != 1 || healed[0] != "a>b" {
		t.Fatalf("healAll = %v; want [a>b]", healed)
	}
	if _, err := nw.cut([]string{"a"}, []string{"c"}, true); err == nil {
		t.Fatal("cutting a link that does not exist: no error")
	}
}
