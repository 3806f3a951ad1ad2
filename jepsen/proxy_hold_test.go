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

// TestLinkHoldsAnswers: while a link is held, what the dialer sends still
// reaches the target and the target's answers wait; releasing the hold
// delivers them in order on the same connection, which stays open.
func TestLinkHoldsAnswers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got := make(chan string, 16) // lines the target read
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					got <- line
					if _, err := io.WriteString(c, line); err != nil {
						return
					}
				}
			}()
		}
	}()
	l, err := newLink("c1>n1", ln.Addr().String())
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
	if line, err := roundTrip(c, r, "up", 10*time.Second); err != nil || line != "up\n" {
		t.Fatalf("through an up link: %q, %v", line, err)
	}
	<-got

	l.setHeld(true)
	for _, line := range []string{"one\n", "two\n"} {
		if _, err := io.WriteString(c, line); err != nil {
			t.Fatal(err)
		}
		select {
		case g := <-got:
			if g != line {
				t.Fatalf("target read %q, want %q", g, line)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("a held link did not forward %q to the target within 10s", line)
		}
	}
	// The answers wait. (The wait bounds how long silence is checked.)
	c.SetDeadline(time.Now().Add(300 * time.Millisecond))
	if line, err := r.ReadString('\n'); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("through a held link: %q, %v; want a timeout", line, err)
	}

	l.setHeld(false)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	for _, want := range []string{"one\n", "two\n"} {
		if line, err := r.ReadString('\n'); err != nil || line != want {
			t.Fatalf("after the hold: %q, %v; want %q", line, err, want)
		}
	}
	if line, err := roundTrip(c, r, "after", 10*time.Second); err != nil || line != "after\n" {
		t.Fatalf("the held connection after the hold: %q, %v", line, err)
	}
}

// A held link that closes lets its waiting pumps go.
func TestLinkCloseWhileHeld(t *testing.T) {
	l, err := newLink("c1>n1", echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", l.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if line, err := roundTrip(c, r, "up", 10*time.Second); err != nil || line != "up\n" {
		t.Fatalf("through an up link: %q, %v", line, err)
	}
	l.setHeld(true)
	if _, err := io.WriteString(c, "held\n"); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { l.close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("close of a held link did not return within 10s")
	}
}
