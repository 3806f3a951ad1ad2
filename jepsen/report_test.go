//go:build unix

package jepsen

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func writeLines(t *testing.T, path string, lines ...string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Merging sorts every event by time, keeps ties in file order, and keeps
// what precedes a torn last line while reporting it.
func TestMergeHistories(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.jsonl"), filepath.Join(dir, "b.jsonl")
	writeLines(t, a,
		`{"t":30,"p":"c1","type":"invoke","op":"allow","id":2,"key":"k"}`,
		`{"t":10,"p":"c1","type":"invoke","op":"allow","id":1,"key":"k"}`,
		`{"t":20,"p":"c1","type":"ok","op":"allow","id":1,"key":"k","lease":7}`,
		"")
	writeLines(t, b,
		`{"t":20,"p":"nemesis","type":"invoke","op":"kill","id":1,"value":"n1"}`,
		`{"t":5,"p":"nemesis","type":"ok","op":"kill","id":1,"value":"n1"}`,
		`{"t":40,"p":"nemesis","type":"inv`) // torn
	var out bytes.Buffer
	events, err := MergeHistories([]string{a, b}, &out)
	if err == nil || !strings.Contains(err.Error(), "b.jsonl") {
		t.Errorf("error = %v, want one naming the torn b.jsonl", err)
	}
	type tp struct {
		T int64
		P string
	}
	var got []tp
	for _, e := range events {
		got = append(got, tp{e.Time, e.Process})
	}
	want := []tp{{5, "nemesis"}, {10, "c1"}, {20, "c1"}, {20, "nemesis"}, {30, "c1"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("merged order (-want +got):\n%s", diff)
	}
	reread, err := ReadHistory(&out)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(events, reread); diff != "" {
		t.Errorf("written history differs from the merged events (-merged +written):\n%s", diff)
	}
	if _, err := MergeHistories([]string{filepath.Join(dir, "missing")}, io.Discard); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: error = %v, want ErrNotExist", err)
	}
}

func TestFaultSpans(t *testing.T) {
	ev := func(tm int64, typ, op, v string) Event {
		return Event{Time: tm, Process: ProcessNemesis, Type: typ, Op: op, Value: v}
	}
	events := []Event{
		ev(10, Invoke, OpKill, "leader:n1"), ev(11, OK, OpKill, "leader:n1"),
		{Time: 12, Process: "c1", Type: Invoke, Op: OpAllow},
		ev(20, Invoke, OpRestart, "leader:n1"), ev(21, OK, OpRestart, "leader:n1"),
		ev(30, Invoke, OpPause, "c2"), ev(31, OK, OpPause, "c2"),
		ev(40, Invoke, OpResume, "c2"), ev(41, Info, OpResume, "c2: signal failed"),
		ev(50, Invoke, OpKill, "n3"), ev(51, OK, OpKill, "n3"), // never restarted
		{Time: 60, Process: "c1", Type: OK, Op: OpAllow},
	}
	want := []faultSpan{
		{op: OpKill, healOp: OpRestart, label: "leader:n1", from: 10, to: 21},
		{op: OpPause, healOp: OpResume, label: "c2", from: 30, to: 41},
		{op: OpKill, healOp: OpRestart, label: "n3", from: 50, to: 60},
	}
	if diff := cmp.Diff(want, faultSpans(events), cmp.AllowUnexported(faultSpan{})); diff != "" {
		t.Errorf("faultSpans (-want +got):\n%s", diff)
	}
}

// The plot is well-formed XML with, per key, a panel holding the admitted
// and granted series and the limit line, and a shaded rectangle per fault.
func TestWritePlot(t *testing.T) {
	keys := DefaultWorkload(2).KeySpecs()
	var events []Event
	base := int64(1_000_000_000_000)
	for i := range 100 {
		tm := base + int64(i)*int64(100*time.Millisecond)
		for _, k := range keys {
			events = append(events,
				Event{Time: tm, Process: "c1", Type: OK, Op: OpAllow, Key: k.Key, N: 1, Lease: 1},
				Event{Time: tm, Process: "c1", Type: OK, Op: OpGrant, Key: k.Key, N: 3, Lease: 1})
		}
	}
	events = append(events,
		Event{Time: base + int64(2*time.Second), Process: ProcessNemesis, Type: Invoke, Op: OpKill, Value: "leader:n1"},
		Event{Time: base + int64(3*time.Second), Process: ProcessNemesis, Type: OK, Op: OpRestart, Value: "leader:n1"},
		Event{Time: base + int64(5*time.Second), Process: ProcessNemesis, Type: Invoke, Op: OpPause, Value: "c2 <&>"},
		Event{Time: base + int64(8*time.Second), Process: ProcessNemesis, Type: OK, Op: OpResume, Value: "c2 <&>"})
	var buf bytes.Buffer
	if err := WritePlot(&buf, events, keys, `run "x" <&>`, "a & b"); err != nil {
		t.Fatal(err)
	}

	classes := map[string]map[string]int{} // panel id -> class -> count
	panel := ""
	dec := xml.NewDecoder(&buf)
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v\n%s", err, buf.String())
		}
		switch el := tok.(type) {
		case xml.StartElement:
			attr := map[string]string{}
			for _, a := range el.Attr {
				attr[a.Name.Local] = a.Value
			}
			if el.Name.Local == "svg" && el.Name.Space != "http://www.w3.org/2000/svg" {
				t.Errorf("svg element in namespace %q", el.Name.Space)
			}
			if el.Name.Local == "g" && attr["class"] == "panel" {
				panel = attr["id"]
				classes[panel] = map[string]int{}
			}
			if panel != "" && attr["class"] != "" {
				classes[panel][attr["class"]]++
			}
			if el.Name.Local == "path" && !strings.HasPrefix(attr["d"], "M") {
				t.Errorf("path %q without data", attr["class"])
			}
		case xml.EndElement:
			if el.Name.Local == "g" {
				panel = ""
			}
		}
	}
	if len(classes) != len(keys) {
		t.Fatalf("panels = %v, want one per key (%d)", len(classes), len(keys))
	}
	for _, k := range keys {
		got := classes["panel-"+k.Key]
		want := map[string]int{"admitted": 1, "granted": 1, "limit": 1, "fault-kill": 1, "fault-pause": 1}
		for class, n := range want {
			if got[class] != n {
				t.Errorf("panel %s: %d elements of class %s, want %d", k.Key, got[class], class, n)
			}
		}
	}
}

func TestYTicks(t *testing.T) {
	tests := []struct {
		ymax float64
		want []float64
	}{
		{5, []float64{0, 2, 4}},
		{500, []float64{0, 200, 400}},
		{1000, []float64{0, 500, 1000}},
		{2, []float64{0, 0.5, 1, 1.5, 2}},
	}
	for _, tt := range tests {
		if got := yTicks(tt.ymax); !cmp.Equal(got, tt.want) {
			t.Errorf("yTicks(%v) = %v, want %v", tt.ymax, got, tt.want)
		}
	}
}

// A group of keys is one panel in the plot, its series summed against the
// sum of its limits.
func TestPlotGroups(t *testing.T) {
	keys := []KeySpec{
		{Key: "solo", Algorithm: AlgorithmTokenBucket, Limit: 5, Period: time.Second},
		{Key: "t-000", Algorithm: AlgorithmTokenBucket, Limit: 2, Period: time.Second, Burst: 2, Group: "t"},
		{Key: "t-001", Algorithm: AlgorithmTokenBucket, Limit: 2, Period: time.Second, Group: "t"},
	}
	events := []Event{{Key: "solo"}, {Key: "t-000"}, {Key: "t-001"}}
	ev, ks := plotGroups(events, keys)
	if len(ks) != 2 || ks[1].Key != "t" || ks[1].Limit != 4 || ks[1].Burst != 4 {
		t.Errorf("keys %+v, want solo and the group t of limit 4, burst 4", ks)
	}
	if ev[0].Key != "solo" || ev[1].Key != "t" || ev[2].Key != "t" || events[1].Key != "t-000" {
		t.Errorf("events %+v (input %+v): want the group's under its name, the input unchanged", ev, events)
	}
}
