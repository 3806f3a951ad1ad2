package fsm

import (
	"bytes"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// seen is what a recordingObserver was told about one command.
type seen struct {
	Type      Type
	TTL       time.Duration
	Keys      []string
	Unused    int64
	HasUnused bool
	Status    Status
	Granted   []int64
}

type recordingObserver struct{ got []seen }

func (r *recordingObserver) Applied(c *Applied) {
	s := seen{Type: c.Type, TTL: c.TTL, Unused: c.Unused, HasUnused: c.HasUnused, Status: c.Result.Status}
	for _, k := range c.Keys {
		s.Keys = append(s.Keys, string(k))
	}
	for _, it := range c.Result.Items {
		s.Granted = append(s.Granted, it.Granted)
	}
	r.got = append(r.got, s)
}

func TestObserverSeesEachCommandAndItsResult(t *testing.T) {
	m := New()
	var o recordingObserver
	m.SetObserver(&o)
	lim := Limit{Algorithm: TokenBucket, Limit: 10, Period: time.Hour}
	m.Apply(Encode(nil, 1, &SetLimit{Key: "a", Limit: lim}))
	res := m.Apply(Encode(nil, 2, &Batch{Commands: []Command{
		&Acquire{ClientID: "c", Seq: 1, TTL: time.Second, Items: []Item{{Key: "a", Count: 4}, {Key: "b", Count: 1, Limit: &lim}}},
		&Acquire{ClientID: "c", Seq: 2, Items: []Item{{Key: "a", Count: 9}}},
		&DeleteLimit{Key: "b"},
	}}))
	m.Apply(Encode(nil, 3, &Release{ClientID: "c", Seq: 3, LeaseID: res[0].LeaseID, Unused: []int64{1, 1}}))
	m.Apply(Encode(nil, 4, &Charge{ClientID: "c", Seq: 4, Items: []ChargeItem{{Key: "a", Tokens: 2}}}))
	want := []seen{
		{Type: TypeSetLimit, Keys: []string{"a"}, Status: StatusOK},
		{Type: TypeAcquire, TTL: time.Second, Keys: []string{"a", "b"}, Status: StatusOK, Granted: []int64{4, 1}},
		{Type: TypeAcquire, Keys: []string{"a"}, Status: StatusDenied, Granted: []int64{0}},
		{Type: TypeDeleteLimit, Keys: []string{"b"}, Status: StatusOK},
		{Type: TypeRelease, Unused: 2, HasUnused: true, Status: StatusOK},
		{Type: TypeCharge, Keys: []string{"a"}, Status: StatusOK, Granted: []int64{2}},
	}
	if diff := cmp.Diff(want, o.got); diff != "" {
		t.Errorf("observed (-want +got):\n%s", diff)
	}
}

// The observer changes nothing the machine decides or keeps.
func TestObserverChangesNothing(t *testing.T) {
	entries, _ := fuzzStream(bytes.Repeat([]byte{3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3}, 64))
	plain, watched := New(), New()
	watched.SetObserver(&recordingObserver{})
	for i, e := range entries {
		if diff := cmp.Diff(plain.Apply(e), watched.Apply(e)); diff != "" {
			t.Fatalf("entry %d: results differ (-plain +observed):\n%s", i, diff)
		}
	}
	var a, b bytes.Buffer
	if err := plain.Snapshot(&a); err != nil {
		t.Fatal(err)
	}
	if err := watched.Snapshot(&b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("snapshots differ with an observer")
	}
}

type nopObserver struct{ n int }

func (o *nopObserver) Applied(c *Applied) { o.n += len(c.Keys) }

func TestObserverAllocatesNothing(t *testing.T) {
	lim := Limit{Algorithm: TokenBucket, Limit: 1 << 40, Period: time.Second}
	e := Encode(nil, 1, &Acquire{Items: []Item{{Key: "k", Count: 1, Limit: &lim}}})
	allocs := func(o Observer) float64 {
		m := New()
		m.SetObserver(o)
		res := make([]Result, 0, 4)
		m.ApplyTo(res[:0], e)
		return testing.AllocsPerRun(200, func() { m.ApplyTo(res[:0], e) })
	}
	if without, with := allocs(nil), allocs(&nopObserver{}); with != without {
		t.Errorf("Apply allocates %v times with an observer, %v without", with, without)
	}
}
