//go:build unix

package jepsen

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestReadHistory(t *testing.T) {
	in := `{"t":1,"p":"c1","type":"invoke","op":"allow","id":1,"key":"k","n":2}

{"t":5,"p":"c1","type":"ok","op":"allow","id":1,"lease":7,"future_field":true}
`
	got, err := ReadHistory(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Event{
		{Time: 1, Process: "c1", Type: Invoke, Op: OpAllow, ID: 1, Key: "k", N: 2},
		{Time: 5, Process: "c1", Type: OK, Op: OpAllow, ID: 1, Lease: 7},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ReadHistory (-want +got):\n%s", diff)
	}
	// No trailing newline is fine too.
	if got, err := ReadHistory(strings.NewReader(strings.TrimSpace(in))); err != nil || len(got) != 2 {
		t.Errorf("without a final newline: %d events, %v", len(got), err)
	}
}

func TestReadHistoryErrors(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"bad json", "{\"t\":1,\"p\":\"c1\",\"type\":\"invoke\",\"op\":\"allow\"}\n{\"t\":2,", "history line 2:"},
		{"unknown type", "\n\n{\"t\":1,\"p\":\"c1\",\"type\":\"oks\",\"op\":\"allow\"}\n", `history line 3: unknown event type "oks"`},
		{"no process", `{"t":1,"type":"ok","op":"allow"}`, "history line 1: event has no process"},
		{"no op", `{"t":1,"p":"c1","type":"ok"}`, "history line 1: event has no op"},
		{"wrong field type", `{"t":"soon","p":"c1","type":"ok","op":"allow"}`, "history line 1:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadHistory(strings.NewReader(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// closeBuffer is a bytes.Buffer that records Close.
type closeBuffer struct {
	bytes.Buffer
	closed bool
}

func (c *closeBuffer) Close() error { c.closed = true; return nil }

func TestHistoryWriterConcurrent(t *testing.T) {
	var buf closeBuffer
	w := NewHistoryWriter(&buf)
	const writers, each = 8, 500
	var wg sync.WaitGroup
	for p := range writers {
		wg.Go(func() {
			for i := range each {
				if err := w.Write(Event{Time: int64(i), Process: string(rune('a' + p)), Type: Invoke, Op: OpAllow, ID: uint64(i)}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if !buf.closed {
		t.Error("Close did not close the underlying writer")
	}
	events, err := ReadHistory(&buf.Buffer)
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != writers*each {
		t.Errorf("read back %d events, want %d", len(events), writers*each)
	}
	if err := w.Write(Event{}); !errors.Is(err, ErrWriterClosed) {
		t.Errorf("Write after Close = %v, want ErrWriterClosed", err)
	}
	if err := w.Flush(); !errors.Is(err, ErrWriterClosed) {
		t.Errorf("Flush after Close = %v, want ErrWriterClosed", err)
	}
}

func TestHistoryWriterFlush(t *testing.T) {
	var buf bytes.Buffer
	w := NewHistoryWriter(&buf)
	if err := w.Write(Event{Time: 3, Process: "c1", Type: OK, Op: OpGrant, ID: 1, Lease: 9}); err != nil {
		t.Fatal(err)
	}
	if buf.Len() != 0 {
		t.Error("Write did not buffer")
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if got, want := buf.String(), `{"t":3,"p":"c1","type":"ok","op":"grant","id":1,"lease":9}`+"\n"; got != want {
		t.Errorf("line = %q, want %q", got, want)
	}
}

// errWriter fails every write.
type errWriter struct{}

func (errWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestHistoryWriterStickyError(t *testing.T) {
	w := NewHistoryWriter(errWriter{})
	_ = w.Write(Event{Process: "c1", Type: OK, Op: OpAllow})
	if err := w.Flush(); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Flush = %v, want the write error", err)
	}
	if err := w.Write(Event{Process: "c1", Type: OK, Op: OpAllow}); err == nil {
		t.Error("Write after an error succeeded")
	}
	if err := w.Close(); err == nil {
		t.Error("Close after an error succeeded")
	}
}

func TestPair(t *testing.T) {
	ev := func(tm int64, p, typ string, id uint64) Event {
		return Event{Time: tm, Process: p, Type: typ, Op: OpAllow, ID: id}
	}
	// Out of order, two processes sharing ids, an orphan, an incomplete
	// op and an id reused after completing.
	events := []Event{
		ev(30, "c1", OK, 1),
		ev(10, "c1", Invoke, 1),
		ev(20, "c2", Invoke, 1),
		ev(25, "c2", Info, 1),
		ev(40, "c1", Invoke, 2),
		ev(5, "c3", Fail, 9),
		ev(50, "c1", Invoke, 1),
		ev(60, "c1", OK, 1),
	}
	ops, orphans := pairOps(events)
	type row struct {
		P        string
		Invoke   int64
		Complete int64
		Type     string
		Done     bool
	}
	var got []row
	for _, o := range ops {
		got = append(got, row{o.Process, o.Invoke.Time, o.Complete.Time, o.Complete.Type, o.Done})
	}
	want := []row{
		{"c1", 10, 30, OK, true},
		{"c2", 20, 25, Info, true},
		{"c1", 40, 0, "", false},
		{"c1", 50, 60, OK, true},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Pair (-want +got):\n%s", diff)
	}
	if len(orphans) != 1 || orphans[0].Process != "c3" {
		t.Errorf("orphans = %v, want c3's fail", orphans)
	}
	if !ops[1].Unknown() || !ops[2].Unknown() || ops[0].Unknown() || !ops[0].OK() {
		t.Error("Unknown/OK misreport info and incomplete ops")
	}
	if ops[2].End() != maxTime || ops[0].End() != 30 {
		t.Error("End misreports")
	}
	if len(Pair(events)) != len(ops) {
		t.Error("Pair and pairOps disagree")
	}
}

func TestKeysRoundTrip(t *testing.T) {
	keys := []KeySpec{
		{Key: "a", Algorithm: AlgorithmTokenBucket, Limit: 100, Period: time.Minute, Burst: 20, Strict: true, MaxLease: time.Second},
		{Key: "b", Algorithm: AlgorithmSlidingWindow, Limit: 5, Period: time.Second},
	}
	var buf bytes.Buffer
	if err := WriteKeys(&buf, keys); err != nil {
		t.Fatal(err)
	}
	got, err := ReadKeys(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(keys, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

func TestReadKeysErrors(t *testing.T) {
	_, err := ReadKeys(strings.NewReader(`[{"key":"a","algorithm":"leaky","limit":0,"period_ns":-1},{"key":"a","algorithm":"token-bucket","limit":1,"period_ns":1}]`))
	if err == nil {
		t.Fatal("ReadKeys accepted bad keys")
	}
	for _, want := range []string{`algorithm "leaky"`, "limit 0", "period -1ns", `key "a" is named twice`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if _, err := ReadKeys(strings.NewReader(`{`)); err == nil {
		t.Error("ReadKeys accepted bad JSON")
	}
}

func TestKeySpecNormalize(t *testing.T) {
	tb := KeySpec{Key: "a", Algorithm: AlgorithmTokenBucket, Limit: 7, Period: time.Second}.Normalize()
	if tb.Burst != 7 || tb.MaxLease != DefaultMaxLease {
		t.Errorf("token bucket normalized to %+v", tb)
	}
	sw := KeySpec{Key: "b", Algorithm: AlgorithmSlidingWindow, Limit: 7, Period: time.Second / 2}.Normalize()
	if sw.Burst != 0 || sw.MaxLease != time.Second/2 {
		t.Errorf("sliding window normalized to %+v", sw)
	}
}
