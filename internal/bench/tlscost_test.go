package bench

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// The table gains the TLS cost line, before the ratio line, when it holds
// runs with and without TLS; without such a pair it has none.
func TestWriteTableTLSCost(t *testing.T) {
	mk := func(name string, decisions int64) Report {
		r := Report{Name: name, Leasehold: strings.HasPrefix(name, "leasehold"),
			Result: Result{Decisions: decisions, Elapsed: time.Second, Latency: NewHistogram()}}
		r.Latency.Record(time.Microsecond)
		return r
	}
	reports := []Report{mk("redis+lua", 50_000), mk("leasehold central", 1_200), mk("leasehold central"+NoTLS, 1_000),
		mk("leasehold lease", 9_000_000), mk("leasehold lease"+NoTLS, 10_000_000)}
	var b bytes.Buffer
	if err := WriteTable(&b, reports); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if got, want := lines[len(lines)-2], "TLS on/off decisions/s: 0.90 (lease, 9M/10M) 1.20 (central, 1.2k/1k); goal ≥ 0.9 in lease mode"; got != want {
		t.Errorf("line before last %q, want %q", got, want)
	}
	if got := lines[len(lines)-1]; !strings.HasPrefix(got, "ratio leasehold/redis decisions/s: 180 (lease) 0.02 (central)") {
		t.Errorf("last line %q: want the ratio of the TLS runs", got)
	}

	b.Reset()
	if err := WriteTable(&b, reports[:2]); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "TLS on/off") {
		t.Errorf("a TLS cost line without runs to compare:\n%s", b.String())
	}
}
