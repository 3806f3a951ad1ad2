package bench

import (
	"strings"
	"testing"
	"time"

	"github.com/leasehold/leasehold/client"
)

// TestDecidedByPrintsLateAnswers: a sliding window's central grant whose
// answer came after its span is refused by the SDK and counted in
// Stats.Denied.LateAnswer; the "decided by" line left it out, so its
// refusals added up to fewer than the run's denials.
func TestDecidedByPrintsLateAnswers(t *testing.T) {
	r := Report{Name: "leasehold central", Leasehold: true, Result: Result{Decisions: 10, Admitted: 3,
		Elapsed: time.Second, Latency: NewHistogram()}}
	r.SDK.Decided.add(client.Stats{Admitted: client.BySource{Central: 3},
		Denied: client.Denials{Cluster: 4, LateAnswer: 2, Unusable: 1}})
	want := "refused: 4 cluster, 2 late answer, 0 failure policy, 1 unusable limiter"
	if s := r.String(); !strings.Contains(s, want) {
		t.Errorf("report:\n%s\nwant a decided-by line with %q", s, want)
	}
}
