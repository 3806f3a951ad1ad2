package redislua

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeServer accepts one connection on 127.0.0.1:0, reads RESP commands
// (arrays of bulk strings) and answers each with reply(cmd), written as is.
type fakeServer struct {
	addr string
	mu   sync.Mutex
	got  [][]string
}

func newFakeServer(t *testing.T, reply func(cmd []string) string) *fakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{addr: ln.Addr().String()}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		for {
			cmd, err := readCommand(r)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.got = append(s.got, cmd)
			s.mu.Unlock()
			if _, err := io.WriteString(c, reply(cmd)); err != nil {
				return
			}
		}
	}()
	return s
}

func (s *fakeServer) commands() [][]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]string(nil), s.got...)
}

// readCommand reads one array of bulk strings, strictly.
func readCommand(r *bufio.Reader) ([]string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(line, "*") || !strings.HasSuffix(line, "\r\n") {
		return nil, fmt.Errorf("bad array header %q", line)
	}
	n, err := strconv.Atoi(line[1 : len(line)-2])
	if err != nil {
		return nil, err
	}
	out := make([]string, n)
	for i := range out {
		h, err := r.ReadString('\n')
		if err != nil {
			return nil, err
		}
		if !strings.HasPrefix(h, "$") {
			return nil, fmt.Errorf("bad bulk header %q", h)
		}
		m, err := strconv.Atoi(h[1 : len(h)-2])
		if err != nil {
			return nil, err
		}
		b := make([]byte, m+2)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, err
		}
		if string(b[m:]) != "\r\n" {
			return nil, fmt.Errorf("bulk string not ended by CRLF")
		}
		out[i] = string(b[:m])
	}
	return out, nil
}

func dial(t *testing.T, addr string) *Conn {
	t.Helper()
	c, err := Dial(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

func TestReplies(t *testing.T) {
	replies := map[string]string{
		"simple":     "+OK\r\n",
		"error":      "-ERR unknown command\r\n",
		"integer":    ":-42\r\n",
		"bulk":       "$5\r\nhe\r\nl\r\n", // a bulk string may hold CRLF
		"empty bulk": "$0\r\n\r\n",
		"null bulk":  "$-1\r\n",
		"array":      "*4\r\n:1\r\n$3\r\nfoo\r\n*1\r\n+x\r\n-ERR inside\r\n",
		"null array": "*-1\r\n",
		"bad type":   "!oops\r\n",
	}
	s := newFakeServer(t, func(cmd []string) string { return replies[cmd[1]] })
	c := dial(t, s.addr)
	for _, tc := range []struct {
		name    string
		want    any
		wantErr string
	}{
		{"simple", "OK", ""},
		{"error", nil, "redis: ERR unknown command"},
		{"integer", int64(-42), ""},
		{"bulk", "he\r\nl", ""},
		{"empty bulk", "", ""},
		{"null bulk", nil, ""},
		{"array", []any{int64(1), "foo", []any{"x"}, Error("ERR inside")}, ""},
		{"null array", nil, ""},
		{"bad type", nil, "protocol error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := c.Do("TEST", tc.name)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Do = %v, %v; want error %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("reply (-want +got):\n%s", diff)
			}
		})
	}
	// An error reply is a value: the connection stays usable.
	var rerr Error
	if _, err := c.Do("TEST", "error"); !errors.As(err, &rerr) {
		t.Errorf("error reply = %v, want an Error", err)
	}
	if v, err := c.Do("TEST", "simple"); err != nil || v != "OK" {
		t.Errorf("after an error reply: %v, %v; want OK", v, err)
	}
	// Commands arrive as arrays of bulk strings.
	if got := s.commands()[0]; !cmp.Equal(got, []string{"TEST", "simple"}) {
		t.Errorf("server got %q", got)
	}
}

func TestProtocolErrors(t *testing.T) {
	for name, reply := range map[string]string{
		"bad integer":   ":4x\r\n",
		"huge bulk":     "$999999999999\r\n",
		"bulk no crlf":  "$2\r\nabXY\r\n",
		"no cr":         "+OK\n",
		"negative bulk": "$-2\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			s := newFakeServer(t, func([]string) string { return reply })
			c := dial(t, s.addr)
			if v, err := c.Do("PING"); !errors.Is(err, errProtocol) {
				t.Fatalf("Do = %v, %v; want a protocol error", v, err)
			}
		})
	}
}

func TestBucketAllow(t *testing.T) {
	const sha = "0123456789abcdef0123456789abcdef01234567"
	var mu sync.Mutex
	loads, noscript := 0, 1 // the first EVALSHA finds no script: reload, retry
	s := newFakeServer(t, func(cmd []string) string {
		mu.Lock()
		defer mu.Unlock()
		switch cmd[0] {
		case "SCRIPT":
			loads++
			return "$40\r\n" + sha + "\r\n"
		case "EVALSHA":
			if noscript > 0 {
				noscript--
				return "-NOSCRIPT No matching script. Please use EVAL.\r\n"
			}
			if cmd[3] == "k1" {
				return ":0\r\n"
			}
			return ":1\r\n"
		}
		return "-ERR unexpected\r\n"
	})
	c := dial(t, s.addr)
	b, err := NewBucket(c, []string{"k0", "k1"}, 1000, 500, -2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	fixed := time.Unix(1_700_000_000, 123_456_000)
	b.now = func() time.Time { return fixed }
	if ok, err := b.Allow(0); err != nil || !ok {
		t.Fatalf("Allow(0) = %v, %v; want admitted", ok, err)
	}
	if ok, err := b.Allow(1); err != nil || ok {
		t.Fatalf("Allow(1) = %v, %v; want denied", ok, err)
	}
	cmds := s.commands()
	if loads != 2 || len(cmds) != 5 {
		t.Fatalf("commands %q: want SCRIPT LOAD, EVALSHA (NOSCRIPT), SCRIPT LOAD, EVALSHA, EVALSHA", cmds)
	}
	if cmds[0][2] != Script {
		t.Error("SCRIPT LOAD did not send Script")
	}
	// The skewed clock: 2s behind, in microseconds.
	now := strconv.FormatInt(fixed.Add(-2*time.Second).UnixMicro(), 10)
	if want := []string{"EVALSHA", sha, "1", "k1", "1000", "500", now, "1"}; !cmp.Equal(cmds[4], want) {
		t.Errorf("EVALSHA = %q, want %q", cmds[4], want)
	}
}

func TestNewBucketRejects(t *testing.T) {
	if _, err := NewBucket(nil, []string{"k"}, 0, 1, 0); err == nil {
		t.Error("rate 0: no error")
	}
	if _, err := NewBucket(nil, nil, 1, 1, 0); err == nil {
		t.Error("no keys: no error")
	}
}
