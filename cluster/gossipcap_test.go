package cluster

import (
	"context"
	"io"
	"log"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/loopback"
)

// TestGossipStreamsAreCapped: the gossip port handles at most max streams
// at once; one more closes the oldest, and a slot given back (memberlist
// closing a stream) takes the next without closing any. Regression:
// memberlist accepted every TCP connection to the gossip port and held
// each for its TCP timeout; 600 silent connections exhausted a node
// limited to 300 file descriptors.
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
	waitFor(t, 10*time.Second, "the streams over the cap handed on", func() bool {
		return len(held) == max+extra
	})
	if open, d, shed := tr.limit.Open(), tr.limit.Displaced(), tr.limit.Shed(); open != max || d != extra || shed != 0 {
		t.Fatalf("open %d, displaced %d, shed %d; want %d, %d, 0", open, d, shed, max, extra)
	}
	// The displaced ones were closed by the node: their reads end.
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

	// memberlist closes one still open: its slot takes the next
	// connection, which closes no other.
	for range extra {
		<-held // the displaced ones, first in
	}
	(<-held).Close()
	dial()
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatalf("no stream handed on after a slot was given back (displaced %d)", tr.limit.Displaced())
	}
	if n := tr.limit.Displaced(); n != extra {
		t.Errorf("displaced %d; want still %d", n, extra)
	}
}

// TestHeldGossipStreamsDoNotKeepPushPullOut: with the gossip port's cap
// shedding new streams, 64 connections from anyone who reaches the port
// (no gossip key), renewed as memberlist timed them out, refused every
// push-pull sync and join. A new stream now closes the oldest: a real
// member joins over TCP, each of three times, behind 64 held streams.
func TestHeldGossipStreamsDoNotKeepPushPullOut(t *testing.T) {
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i + 7)
	}
	start := func(id string) *gossip {
		t.Helper()
		ports, err := loopback.StablePorts(1) // TCP and UDP, out of the ephemeral range
		if err != nil {
			t.Fatal(err)
		}
		cfg := GossipConfig{BindAddr: "127.0.0.1:" + strconv.Itoa(ports[0]), Keys: [][]byte{key}}
		g, err := startGossip(cfg.withDefaults(), id, memberMeta{Cluster: DefaultClusterName, LastContactMs: -1},
			slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { g.shutdown() })
		return g
	}
	a, b := start("a"), start("b")

	// The attacker: maxGossipStreams connections that say nothing, each
	// opened again at once when memberlist times it out (its TCP timeout,
	// 1 s on loopback), bounded in count and time; one the node closed for
	// a newer stream waits 100 ms before it comes back, so the test's
	// attacker does not chase its own tail.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		conns  []net.Conn
		dialed atomic.Int64
	)
	defer func() {
		cancel()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	for range maxGossipStreams {
		wg.Go(func() {
			for ctx.Err() == nil && dialed.Add(1) <= 20*maxGossipStreams {
				c, err := (&net.Dialer{}).DialContext(ctx, "tcp", a.addr())
				if err != nil {
					return
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
				opened := time.Now()
				_, _ = io.Copy(io.Discard, c)
				c.Close()
				if time.Since(opened) < 500*time.Millisecond {
					select {
					case <-time.After(100 * time.Millisecond):
					case <-ctx.Done():
					}
				}
			}
		})
	}
	waitFor(t, 10*time.Second, "the attacker's streams held", func() bool {
		return a.tr.limit.Open() == maxGossipStreams
	})
	for i := range 3 {
		if n, err := b.ml.Join([]string{a.addr()}); n != 1 || err != nil {
			t.Fatalf("join %d behind %d held streams: %d joined, %v (shed %d, displaced %d)", i+1, maxGossipStreams, n, err,
				a.tr.limit.Shed(), a.tr.limit.Displaced())
		}
	}
	if _, ok := a.member("b"); !ok {
		t.Fatal("the joined member is not known to the node")
	}
}
