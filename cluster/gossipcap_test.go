package cluster

import (
	"io"
	"log"
	"log/slog"
	"net"
	"strconv"
	"testing"
	"time"
)

// TestGossipStreamsAreCapped: the gossip port handles at most max streams
// at once; one more is closed at once, and a slot given back (memberlist
// closing a stream) takes the next. Regression: memberlist accepted every
// TCP connection to the gossip port and held each for its TCP timeout; 600
// silent connections exhausted a node limited to 300 file descriptors.
//
// The streams are held by the test, in memberlist's place, so that no
// timeout of memberlist's frees a slot meanwhile.
func TestGossipStreamsAreCapped(t *testing.T) {
	const max, extra = 8, 5
	tr, err := newCappedTransport("127.0.0.1", 0, max, slog.New(slog.DiscardHandler), log.New(io.Discard, "", 0))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := tr.Shutdown(); err != nil {
			t.Error(err)
		}
	}()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(tr.GetAutoBindPort()))

	held := make(chan net.Conn, 2*max)
	go func() {
		for {
			select {
			case c := <-tr.StreamCh():
				held <- c
			case <-tr.done:
				return
			}
		}
	}()
	var clients []net.Conn
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	dial := func() net.Conn {
		t.Helper()
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		return c
	}
	for range max + extra {
		dial()
	}
	waitFor(t, 10*time.Second, "the streams over the cap refused", func() bool {
		return tr.limit.Shed() == extra
	})
	if n := len(held); n != max {
		t.Fatalf("streams handed to memberlist: %d; want the cap, %d", n, max)
	}
	// The refused ones were closed by the node: their reads end.
	closed := 0
	for _, c := range clients {
		_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err == io.EOF {
			closed++
		}
	}
	if closed != extra {
		t.Errorf("client connections the node closed: %d; want %d", closed, extra)
	}

	// memberlist closes one: its slot takes the next connection.
	(<-held).Close()
	dial()
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatalf("no stream handed on after a slot was given back (refused %d)", tr.limit.Shed())
	}
	if n := tr.limit.Shed(); n != extra {
		t.Errorf("refused %d; want still %d", n, extra)
	}
}
