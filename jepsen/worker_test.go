//go:build unix

package jepsen

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/internal/proc"
)

func TestWorkerArgsRoundTrip(t *testing.T) {
	want := WorkerConfig{Name: "c3", Endpoints: []string{"127.0.0.1:1", "127.0.0.1:2"}, Workload: "/r/workload.json",
		History: "/r/history-c3.jsonl", Seed: 7003, Duration: 90 * time.Second,
		TLS: &proc.TLSFiles{CA: "/r/ca.pem", Cert: "/r/client-c3.pem", Key: "/r/client-c3-key.pem"}}
	for _, tls := range []bool{true, false} {
		if !tls {
			want.TLS = nil
		}
		got, err := ParseWorkerArgs(want.Args())
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("round trip, TLS %v (-want +got):\n%s", tls, diff)
		}
	}
	if _, err := ParseWorkerArgs([]string{"--duration", "0s"}); err == nil {
		t.Error("no endpoints, no history, zero duration: no error")
	}
	base := []string{"--endpoints", "127.0.0.1:1", "--history", "h"}
	for _, args := range [][]string{base, append(base, "--ca", "a"), append(base, "--insecure", "--ca", "a", "--cert", "b", "--key", "c")} {
		if _, err := ParseWorkerArgs(args); err == nil {
			t.Errorf("ParseWorkerArgs(%q): no error; want one about --ca/--cert/--key or --insecure", args)
		}
	}
}

// The default workload is valid, asks several times each limit, survives
// workload.json, and its keys are valid for the checkers.
func TestDefaultWorkload(t *testing.T) {
	for _, clients := range []int{1, 4, 32} {
		w := DefaultWorkload(clients)
		path := filepath.Join(t.TempDir(), "workload.json")
		if err := writeJSON(path, w); err != nil {
			t.Fatal(err)
		}
		back, err := ReadWorkload(path)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(w, back); diff != "" {
			t.Errorf("workload.json round trip (-want +got):\n%s", diff)
		}
		for _, k := range w.KeySpecs() {
			if err := k.Validate(); err != nil {
				t.Errorf("clients %d: %v", clients, err)
			}
		}
		groups := 0
		for _, k := range w.Keys {
			total := k.Demand * float64(clients)
			if k.Light {
				if total >= k.TotalRatePerSecond() {
					t.Errorf("clients %d: light key %s: demand %.0f/s, want below its limit %.0f/s", clients, k.Key, total, k.TotalRatePerSecond())
				}
				continue
			}
			if total < 3*k.TotalRatePerSecond() {
				t.Errorf("clients %d: key %s: demand %.0f/s, want at least 3x its limit %.0f/s", clients, k.Key, total, k.TotalRatePerSecond())
			}
			if k.Keys > 1 {
				groups++
			}
		}
		if groups != 1 {
			t.Errorf("clients %d: %d key groups, want the many-keys group", clients, groups)
		}
	}
}

// Several loops on one key each get the trace's report of their own
// admission, and only it: a report made on another goroutine, for another
// key, or twice leaves the Allow "untraced". One slot per key, as before
// keys had several callers, fails the concurrent part.
func TestTraceRecorderPairsAdmissionsWithTheirLoop(t *testing.T) {
	rec := newTraceRecorder(nil, "c1")
	admit := rec.trace().Admit
	const loops = 16
	type result struct {
		lease uint64
		value string
	}
	results := make([]result, loops)
	var reported, checked sync.WaitGroup
	reported.Add(loops)
	checked.Add(loops)
	for i := range loops {
		go func() {
			defer checked.Done()
			slot := rec.enter("k")
			defer rec.leave()
			slot.reset()
			admit(client.AdmitInfo{Key: "k", N: 1, LeaseID: uint64(100 + i), Source: client.AdmitLeased})
			reported.Done()
			reported.Wait() // every loop has reported before any reads its slot
			results[i].lease, results[i].value = slot.outcome()
		}()
	}
	checked.Wait()
	for i, r := range results {
		if want := (result{lease: uint64(100 + i)}); r != want {
			t.Errorf("loop %d: outcome %+v, want %+v", i, r, want)
		}
	}

	cases := []struct {
		name      string
		elsewhere bool
		admits    []client.AdmitInfo
		lease     uint64
		value     string
	}{
		{name: "leased", admits: []client.AdmitInfo{{Key: "k", N: 1, LeaseID: 7, Source: client.AdmitLeased}}, lease: 7},
		{name: "central", admits: []client.AdmitInfo{{Key: "k", N: 1, Source: client.AdmitCentral}}},
		{name: "fallback", admits: []client.AdmitInfo{{Key: "k", N: 1, Source: client.AdmitFallback}}, value: ValueFallback},
		{name: "none", value: "untraced"},
		{name: "twice", admits: []client.AdmitInfo{{Key: "k", N: 1, Source: client.AdmitCentral}, {Key: "k", N: 1, Source: client.AdmitCentral}}, value: "untraced"},
		{name: "other key", admits: []client.AdmitInfo{{Key: "j", N: 1, Source: client.AdmitCentral}}, value: "untraced"},
		{name: "other goroutine", elsewhere: true, admits: []client.AdmitInfo{{Key: "k", N: 1, Source: client.AdmitCentral}}, value: "untraced"},
	}
	for _, tc := range cases {
		done := make(chan result)
		go func() {
			slot := rec.enter("k")
			defer rec.leave()
			slot.reset()
			for _, a := range tc.admits {
				if tc.elsewhere {
					var other sync.WaitGroup
					other.Go(func() { admit(a) })
					other.Wait()
					continue
				}
				admit(a)
			}
			var r result
			r.lease, r.value = slot.outcome()
			done <- r
		}()
		if got, want := <-done, (result{tc.lease, tc.value}); got != want {
			t.Errorf("%s: outcome %+v, want %+v", tc.name, got, want)
		}
	}
}

// A workload with a key's callers out of range is refused, naming the key.
func TestWorkloadCallersValidated(t *testing.T) {
	for _, callers := range []int{-1, maxCallers + 1} {
		w := DefaultWorkload(4)
		w.Keys[0].Callers = callers
		err := w.validate()
		if err == nil || !strings.Contains(err.Error(), w.Keys[0].Key) {
			t.Errorf("callers %d: validate = %v, want an error naming key %q", callers, err, w.Keys[0].Key)
		}
	}
	if err := DefaultWorkload(4).validate(); err != nil {
		t.Errorf("default workload: %v", err)
	}
}

// A group of keys is its keys one by one for the checkers, each naming the
// group; a name that clashes with another key is refused.
func TestWorkloadGroup(t *testing.T) {
	w := Workload{Keys: []WorkloadKey{
		{Key: "solo", Algorithm: "token-bucket", Rate: 5, Per: time.Second, MaxLease: time.Second, Demand: 10},
		{Key: "t", Keys: 3, Algorithm: "token-bucket", Rate: 2, Per: time.Second, Burst: 2, MaxLease: time.Second, Demand: 10},
	}}
	if err := w.validate(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, k := range w.KeySpecs() {
		got = append(got, k.Key+"/"+k.Group)
	}
	if want := []string{"solo/", "t-000/t", "t-001/t", "t-002/t"}; !cmp.Equal(got, want) {
		t.Errorf("key specs %v, want %v", got, want)
	}
	if r := w.Keys[1].TotalRatePerSecond(); r != 6 {
		t.Errorf("group total rate %v/s, want 6/s", r)
	}
	w.Keys[0].Key = "t-001"
	if err := w.validate(); err == nil || !strings.Contains(err.Error(), "t-001") {
		t.Errorf("a key clashing with a group's: validate = %v, want an error naming it", err)
	}
}

// A budget entry is two rule keys, scope/requests and scope/tokens, each a
// budget key with its burst as its debt cap, as the SDK names and sets
// them; one whose estimate cannot fit its token burst is refused.
func TestWorkloadBudget(t *testing.T) {
	w := DefaultWorkload(4)
	var got []string
	for _, k := range w.KeySpecs() {
		if k.Budget != "" {
			got = append(got, fmt.Sprintf("%s %s debt=%d burst=%d", k.Key, k.Budget, k.MaxDebt, k.Burst))
		}
	}
	want := []string{"budget/requests budget debt=50 burst=50", "budget/tokens budget debt=1000 burst=1000"}
	if !cmp.Equal(got, want) {
		t.Errorf("budget key specs %v, want %v", got, want)
	}
	i := slices.IndexFunc(w.Keys, func(k WorkloadKey) bool { return k.Budget != nil })
	b := *w.Keys[i].Budget
	b.MaxEstimate = b.TokenBurst + 1
	w.Keys[i].Budget = &b
	if err := w.validate(); err == nil || !strings.Contains(err.Error(), "max estimate") {
		t.Errorf("validate = %v, want the estimate above the token burst refused", err)
	}
}
