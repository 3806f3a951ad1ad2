package fsm

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// visitRecord is what a recordingVisitor was told.
type visitRecord struct {
	I      int
	Typ    Type
	TTL    time.Duration
	Keys   []string
	Unused int64
	HasU   bool
}

type recordingVisitor struct{ got []visitRecord }

func (r *recordingVisitor) Command(i int, typ Type, ttl time.Duration) {
	r.got = append(r.got, visitRecord{I: i, Typ: typ, TTL: ttl})
}

func (r *recordingVisitor) Key(i, item int, key []byte) {
	rec := &r.got[len(r.got)-1]
	if rec.I != i || item != len(rec.Keys) {
		rec.Keys = append(rec.Keys, "OUT OF ORDER")
	}
	rec.Keys = append(rec.Keys, string(key))
}

func (r *recordingVisitor) Unused(i int, total int64) {
	rec := &r.got[len(r.got)-1]
	rec.Unused, rec.HasU = total, true
}

// expectVisit is what Visit should report for c, decoded by Decode.
func expectVisit(c Command) []visitRecord {
	cmds := []Command{c}
	if b, ok := c.(*Batch); ok {
		cmds = b.Commands
	}
	var out []visitRecord
	for i, c := range cmds {
		r := visitRecord{I: i, Typ: c.commandType()}
		switch c := c.(type) {
		case *SetLimit:
			if c.Key != "" {
				r.Keys = []string{c.Key}
			}
		case *DeleteLimit:
			if c.Key != "" {
				r.Keys = []string{c.Key}
			}
		case *Acquire:
			r.TTL = c.TTL
			for _, it := range c.Items {
				r.Keys = append(r.Keys, it.Key)
			}
		case *Release:
			if len(c.Unused) > 0 {
				r.HasU = true
				for _, u := range c.Unused {
					r.Unused += u
				}
			}
		}
		out = append(out, r)
	}
	return out
}

func TestVisitMatchesDecode(t *testing.T) {
	for _, c := range []Command{fullSet, fullDelete, fullAcquire, fullRelease,
		&Batch{Commands: []Command{fullSet, fullDelete, fullAcquire, fullRelease}},
		&Acquire{Items: []Item{{Key: "a", Count: 1}, {Key: "b", Count: 2}}, TTL: time.Second},
		&Release{LeaseID: 3}} {
		var v recordingVisitor
		if err := Visit(Encode(nil, 7, c), &v); err != nil {
			t.Fatalf("Visit(%T): %v", c, err)
		}
		if diff := cmp.Diff(expectVisit(c), v.got); diff != "" {
			t.Errorf("Visit(%T) (-want +got):\n%s", c, diff)
		}
	}
}

// A checker that cannot fail proves nothing: a corrupt entry is an error.
func TestVisitRefusesCorruptEntries(t *testing.T) {
	for name, e := range map[string][]byte{
		"empty":        {},
		"unknown type": {99, 0x08, 0x01},
		"nested batch": {byte(TypeBatch), 0x12, 0x01, byte(TypeBatch)},
		"bad varint":   {byte(TypeAcquire), 0x30, 0x80},
	} {
		if err := Visit(e, &recordingVisitor{}); err == nil {
			t.Errorf("%s: Visit accepted %x", name, e)
		}
	}
}

func TestVisitAllocatesNothing(t *testing.T) {
	e := Encode(nil, 1, &Batch{Commands: []Command{fullAcquire, fullRelease, fullAcquire}})
	var v countingVisitor
	if n := testing.AllocsPerRun(100, func() { _ = Visit(e, &v) }); n != 0 {
		t.Errorf("Visit allocates %v times per entry", n)
	}
}

type countingVisitor struct{ n int }

func (c *countingVisitor) Command(int, Type, time.Duration) { c.n++ }
func (c *countingVisitor) Key(int, int, []byte)             { c.n++ }
func (c *countingVisitor) Unused(int, int64)                { c.n++ }

// FuzzVisit: whatever Decode accepts, Visit reports as Decode read it.
func FuzzVisit(f *testing.F) {
	for _, c := range []Command{fullSet, fullDelete, fullAcquire, fullRelease,
		&Batch{Commands: []Command{fullSet, fullDelete, fullAcquire, fullRelease}}} {
		f.Add(Encode(nil, 12345, c))
	}
	f.Fuzz(func(t *testing.T, entry []byte) {
		var v recordingVisitor
		verr := Visit(entry, &v)
		_, c, err := Decode(entry)
		if err != nil {
			return // Visit is laxer: it skips fields it does not report
		}
		if verr != nil {
			t.Fatalf("Decode accepts %x, Visit says %v", entry, verr)
		}
		if diff := cmp.Diff(expectVisit(c), v.got); diff != "" {
			t.Errorf("Visit differs from Decode (-want +got):\n%s", diff)
		}
	})
}

func TestCountLeasesAndKeyInfo(t *testing.T) {
	m := New()
	lim := Limit{Algorithm: TokenBucket, Limit: 100, Period: time.Second}
	apply := func(now int64, c Command) Result { return m.Apply(Encode(nil, now, c))[0] }
	apply(1, &SetLimit{Key: "a", Limit: lim})
	for i, client := range []string{"c1", "c2", "c2"} {
		r := apply(2, &Acquire{ClientID: client, Seq: uint64(i + 1), TTL: time.Second,
			Items: []Item{{Key: "a", Count: 5, Limit: &lim}, {Key: "b", Count: 1, Limit: &lim}}})
		if r.Status != StatusOK {
			t.Fatalf("acquire %d: %v %s", i, r.Status, r.Message)
		}
	}
	info, ok := m.KeyInfo("a")
	if !ok || !info.Pinned || info.Lessees != 2 || info.Limit.Limit != 100 {
		t.Errorf("KeyInfo(a) = %+v, %v; want pinned, 2 lessees, limit 100", info, ok)
	}
	if info, ok := m.KeyInfo("b"); !ok || info.Pinned {
		t.Errorf("KeyInfo(b) = %+v, %v; want unpinned", info, ok)
	}
	if _, ok := m.KeyInfo("zz"); ok {
		t.Error("KeyInfo of a missing key found one")
	}
	keys := map[string]*LeaseTotal{"a": {}, "zz": {}}
	m.CountLeases(keys)
	if got := *keys["a"]; got != (LeaseTotal{Leases: 3, Tokens: 15}) {
		t.Errorf("CountLeases a = %+v; want 3 leases, 15 tokens", got)
	}
	if got := *keys["zz"]; got != (LeaseTotal{}) {
		t.Errorf("CountLeases zz = %+v; want none", got)
	}
	// Past expiry in log time, a lease no longer counts.
	m.now = 2 + int64(2*time.Second)
	keys = map[string]*LeaseTotal{"a": {}}
	m.CountLeases(keys)
	if got := *keys["a"]; got != (LeaseTotal{}) {
		t.Errorf("after expiry, CountLeases a = %+v; want none", got)
	}
}
