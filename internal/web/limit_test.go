package web

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// probe sends one GET /healthz on c, keeping it open, and returns the
// status code, or an error if the server closed the connection instead.
func probe(c net.Conn) (int, error) {
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return 0, err
	}
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, err
}

// TestHTTPConnectionsAreCapped: the HTTP listener answers probes without a
// certificate, and it held every connection anyone opened (for 2 minutes
// each when idle after a request): on a real node with 300 file
// descriptors, 400 connections to it left the client API unreachable,
// gossip and the disk check failing with "too many open files". Beyond
// Config.MaxConns a connection is now closed at once, and a slot given
// back serves again.
func TestHTTPConnectionsAreCapped(t *testing.T) {
	const max = 4
	_, addr := serve(t, Config{Node: &fakeNode{id: "n1"}, MaxConns: max})
	var held []net.Conn
	for i := range max {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if code, err := probe(c); err != nil || code != http.StatusOK {
			t.Fatalf("connection %d within the limit: %d, %v", i+1, code, err)
		}
		held = append(held, c)
	}
	over, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	if code, err := probe(over); err == nil {
		t.Fatalf("connection %d, over the limit of %d, was served: %d", max+1, max, code)
	} else if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection over the limit was left open: %v", err)
	}

	held[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		code, err := probe(c)
		c.Close()
		if err == nil && code == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a slot given back does not serve again: %d, %v", code, err)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition with a deadline
	}
}
