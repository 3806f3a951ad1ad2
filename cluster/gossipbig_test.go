package cluster

import (
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/leasehold/leasehold/internal/loopback"
	"github.com/leasehold/leasehold/internal/ratelog"
)

// TestBigGossipStreamIsNotBuffered: a stream that announces an encrypted
// message of 20 MiB (memberlist's limit) and sends it, junk, from someone
// without the key, is closed after maxGossipStreamBytes, and a member
// still joins after. Regression: memberlist read the whole declared length
// into memory before it tried to decrypt it, ~80 MB of heap per
// connection; 16 connections took a node from 42 to 684 MB.
//
// What the node read is measured as the bytes its process allocated while
// it handled the stream (runtime.MemStats.TotalAlloc, which no collection
// lowers): reading 20 MiB into a growing buffer allocates more than that,
// a bounded read well under half of it. The node's TCP timeout is the LAN
// one (10 s), so that memberlist has the time to read the whole stream, as
// it would between machines, before its deadline closes it.
func TestBigGossipStreamIsNotBuffered(t *testing.T) {
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i + 11)
	}
	start := func(id string) *gossip {
		t.Helper()
		ports, err := loopback.StablePorts(1) // TCP and UDP, out of the ephemeral range
		if err != nil {
			t.Fatal(err)
		}
		cfg := GossipConfig{BindAddr: "127.0.0.1:" + strconv.Itoa(ports[0]), Keys: [][]byte{key},
			tuneMemberlist: func(mc *memberlist.Config) { mc.TCPTimeout = 10 * time.Second }}
		g, err := startGossip(cfg.withDefaults(), id, memberMeta{Cluster: DefaultClusterName, LastContactMs: -1},
			testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { g.shutdown() })
		return g
	}
	a := start("a")

	const declared = 20 << 20
	junk := make([]byte, 1<<20)
	c, err := net.DialTimeout("tcp", a.addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)

	// The attacker writes the header and then junk up to the declared
	// length, until the node closes the stream; then it reads what the
	// node answers until the end. Either way the node is done with it.
	sent := make(chan int64, 1)
	go func() {
		hdr := []byte{10, 0, 0, 0, 0} // memberlist's encryptMsg and a big-endian length
		binary.BigEndian.PutUint32(hdr[1:], declared)
		var n int64
		if _, err := c.Write(hdr); err == nil {
			for n < declared {
				w, err := c.Write(junk[:min(len(junk), declared-int(n))])
				n += int64(w)
				if err != nil {
					break
				}
			}
		}
		sent <- n
	}()
	var n int64
	select {
	case n = <-sent:
	case <-time.After(40 * time.Second):
		t.Fatal("the attacker's writes did not end")
	}
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Logf("reading the node's answer: %v", err) // a reset, once the node closed with junk unread
	}
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("attacker wrote %d of %d bytes; the process allocated %d bytes meanwhile", n, declared, alloc)
	if alloc > declared/2 {
		t.Errorf("the node allocated %d bytes for a stream from someone without the key; want under %d "+
			"(it reads at most %d)", alloc, declared/2, maxGossipStreamBytes)
	}

	b := start("b")
	if n, err := b.ml.Join([]string{a.addr()}); n != 1 || err != nil {
		t.Fatalf("join after the big stream: %d joined, %v", n, err)
	}
	waitFor(t, 10*time.Second, "the joined member known to the node", func() bool {
		_, ok := a.member("b")
		return ok
	})
}

// TestGossipStreamReadsAreBounded: a stream's reads give the bytes within
// maxGossipStreamBytes and then fail, even with a larger buffer asked.
func TestGossipStreamReadsAreBounded(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	s := &streamBound{Conn: server, left: maxGossipStreamBytes,
		t: &cappedTransport{log: slog.New(slog.DiscardHandler), overLog: ratelog.New(time.Second, 5)}}
	defer s.Close()
	go func() {
		_, _ = client.Write(make([]byte, maxGossipStreamBytes+1))
	}()
	n, err := io.ReadFull(s, make([]byte, maxGossipStreamBytes))
	if err != nil || n != maxGossipStreamBytes {
		t.Fatalf("read %d bytes, %v; want %d, nil", n, err, maxGossipStreamBytes)
	}
	if n, err := s.Read(make([]byte, 16)); n != 0 || err == nil {
		t.Fatalf("read past the limit: %d bytes, %v; want 0 and an error", n, err)
	}
}
