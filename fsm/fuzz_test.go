package fsm

import (
	"bytes"
	"reflect"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// FuzzDecode: Decode never panics, and whatever it accepts encodes back into an
// entry that decodes to the same command, byte-identically on a second round.
func FuzzDecode(f *testing.F) {
	for _, c := range []Command{fullSet, fullDelete, fullAcquire, fullRelease, fullCharge, fullExtend, fullRestrict, fullDeletes,
		&Batch{Commands: []Command{fullSet, fullDelete, fullAcquire, fullRelease, fullCharge, fullExtend, fullRestrict, fullDeletes}},
		&Acquire{Items: []Item{{Key: "k", Count: 1}}}, &Batch{}, &SetLimit{}} {
		f.Add(Encode(nil, 12345, c))
	}
	f.Add([]byte{})
	f.Add([]byte{byte(TypeRelease), 0x32, 0x01, 0x80})
	f.Add([]byte{byte(TypeBatch), 0x12, 0x03, byte(TypeAcquire), 0x38, 0x01})
	f.Fuzz(func(t *testing.T, entry []byte) {
		now, c, err := Decode(entry)
		if err != nil {
			return
		}
		e1 := Encode(nil, now, c)
		now2, c2, err := Decode(e1)
		if err != nil {
			t.Fatalf("Decode(Encode(Decode(%x))) = %v", entry, err)
		}
		if now2 != now {
			t.Errorf("time %d, then %d", now, now2)
		}
		if diff := cmp.Diff(c, c2, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("re-decoded command differs (-first +second):\n%s", diff)
		}
		if e2 := Encode(nil, now2, c2); !bytes.Equal(e1, e2) {
			t.Errorf("encoding is not stable: %x, then %x", e1, e2)
		}
	})
}

// fuzzSource reads the fuzzer's bytes as choices; past the end every choice is
// 0.
type fuzzSource struct{ b []byte }

func (s *fuzzSource) byte() byte {
	if len(s.b) == 0 {
		return 0
	}
	v := s.b[0]
	s.b = s.b[1:]
	return v
}

func (s *fuzzSource) n(k int) int { return int(s.byte()) % k }

func (s *fuzzSource) limit() Limit {
	return Limit{
		Algorithm: Algorithm(s.n(4)), // 0 is invalid
		Limit:     int64(s.n(32)),    // 0 is invalid
		Period:    time.Duration(s.n(16)) * 100 * time.Millisecond,
		Burst:     int64(s.n(40)),
		Slots:     int32(s.n(70)), // above 64 is invalid
		Strict:    s.n(2) == 1,
		MaxLease:  time.Duration(s.n(8)) * 500 * time.Millisecond,
		MaxDebt:   int64(s.n(24)) - 2, // below 0 is invalid
		Buckets:   int32(s.n(70)),     // below Slots or above 64 is invalid
	}
}

// fuzzStream interprets data as a stream of log entries. It applies them to a
// machine as it goes, to release leases that were really granted, and returns
// the entries and that machine's results.
func fuzzStream(data []byte) (entries [][]byte, results [][]Result) {
	s := &fuzzSource{b: data}
	m := New()
	keys := []string{"a", "b", "c", "d"}
	clients := []string{"", "c1", "c2"}
	seqs := make([]uint64, len(clients))
	type grant struct {
		client string
		id     uint64
		items  int
	}
	var leases []grant
	now := int64(0)
	var batch []Command
	// session stamps a new (or, a quarter of the time, a retried) seq of
	// client ci.
	session := func(ci int) (seq, acked uint64) {
		if s.n(4) == 0 && seqs[ci] > 0 {
			seq = seqs[ci] - uint64(s.n(int(min(seqs[ci], 255))))
		} else {
			seqs[ci]++
			seq = seqs[ci]
		}
		return seq, seq - uint64(s.n(int(min(seq, 255))+1))
	}
	command := func() Command {
		switch s.n(10) {
		case 6:
			ci := s.n(len(clients))
			c := &Charge{ClientID: clients[ci]}
			c.Seq, c.AckedBelow = session(ci)
			for range 1 + s.n(3) {
				it := ChargeItem{Key: keys[s.n(len(keys))], Tokens: int64(s.n(40)) - 1}
				if s.n(2) == 1 {
					l := s.limit()
					it.Limit = &l
				}
				c.Items = append(c.Items, it)
			}
			return c
		case 7:
			ci := s.n(len(clients))
			r := &Restrict{ClientID: clients[ci]}
			r.Seq, r.AckedBelow = session(ci)
			for range 1 + s.n(3) {
				it := RestrictItem{Key: keys[s.n(len(keys))], Remaining: int64(s.n(24)) - 2,
					BlockFor: time.Duration(s.n(64)-1) * 100 * time.Millisecond}
				if s.n(2) == 1 {
					l := s.limit()
					it.Limit = &l
				}
				r.Items = append(r.Items, it)
			}
			return r
		case 8:
			e := &Extend{LeaseID: uint64(s.n(8)), TTL: time.Duration(s.n(64)-1) * 100 * time.Millisecond}
			ci := s.n(len(clients))
			if len(leases) > 0 && s.n(4) != 0 {
				g := leases[s.n(len(leases))]
				e.LeaseID = g.id
				for i, c := range clients {
					if c == g.client {
						ci = i
					}
				}
			}
			e.ClientID = clients[ci]
			e.Seq, e.AckedBelow = session(ci)
			return e
		case 0:
			return &SetLimit{Key: keys[s.n(len(keys))], Limit: s.limit()}
		case 1:
			return &DeleteLimit{Key: keys[s.n(len(keys))]}
		case 9:
			return &DeleteLimits{Prefix: []string{"", "a", "b"}[s.n(3)],
				StartAfter: []string{"", "a", "c"}[s.n(3)], UnpinnedOnly: s.n(2) == 0}
		case 2, 3:
			ci := s.n(len(clients))
			a := &Acquire{ClientID: clients[ci], TTL: time.Duration(s.n(64)) * 50 * time.Millisecond}
			if s.n(4) == 0 && seqs[ci] > 0 {
				a.Seq = seqs[ci] - uint64(s.n(int(min(seqs[ci], 255)))) // a retry, maybe
			} else {
				seqs[ci]++
				a.Seq = seqs[ci]
			}
			a.AckedBelow = a.Seq - uint64(s.n(int(min(a.Seq, 255))+1))
			if s.n(2) == 1 {
				a.Paced = true
				a.PacedAfter = now + int64(s.n(64)-8)*int64(50*time.Millisecond)
			}
			for range 1 + s.n(3) {
				it := Item{Key: keys[s.n(len(keys))], Count: int64(s.n(12)) - 1, Want: int64(s.n(32))}
				if s.n(2) == 1 {
					l := s.limit()
					it.Limit = &l
				}
				a.Items = append(a.Items, it)
			}
			if a.TTL == 0 && s.n(2) == 1 {
				// A central grant counted over a span (drawn last, so
				// that the inputs found before it keep their meaning).
				a.Span = time.Duration(s.n(64)) * 5 * time.Millisecond
			}
			return a
		default:
			r := &Release{LeaseID: uint64(s.n(8))}
			if len(leases) > 0 && s.n(4) != 0 {
				g := leases[s.n(len(leases))]
				r.ClientID, r.LeaseID = g.client, g.id
				if s.n(2) == 1 {
					for range g.items + s.n(3)/2 {
						r.Unused = append(r.Unused, int64(s.n(16))-1)
					}
				}
			}
			if s.n(4) == 0 {
				r.ClientID = clients[s.n(len(clients))]
			}
			for i, c := range clients {
				if c == r.ClientID && c != "" {
					seqs[i]++
					r.Seq = seqs[i]
				}
			}
			return r
		}
	}
	emit := func(c Command) {
		stamp := now
		switch s.n(8) {
		case 0: // from the past
			stamp -= int64(s.n(256)) * int64(10*time.Millisecond)
		case 1: // a long pause
			now += int64(s.n(256)) * int64(time.Minute)
			stamp = now
		default:
			now += int64(s.n(256)) * int64(20*time.Millisecond)
			stamp = now
		}
		e := Encode(nil, stamp, c)
		res := m.Apply(e)
		entries, results = append(entries, e), append(results, res)
		cmds := []Command{c}
		if b, ok := c.(*Batch); ok {
			cmds = b.Commands
		}
		for i, c := range cmds {
			if a, ok := c.(*Acquire); ok && res[i].Status == StatusOK && res[i].LeaseID != 0 {
				leases = append(leases, grant{client: a.ClientID, id: res[i].LeaseID, items: len(a.Items)})
			}
		}
	}
	for len(s.b) > 0 && len(entries) < 300 {
		if s.n(5) == 0 {
			batch = batch[:0]
			for range 2 + s.n(4) {
				batch = append(batch, command())
			}
			emit(&Batch{Commands: append([]Command(nil), batch...)})
		} else {
			emit(command())
		}
	}
	return entries, results
}

// FuzzApply: Apply never panics on a well-formed entry, two machines fed the
// same entries decide the same and snapshot the same bytes, and a machine
// restored halfway goes on exactly as the original.
func FuzzApply(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f"))
	f.Add(bytes.Repeat([]byte{2, 1, 3, 9, 5, 7, 1, 1, 4, 0, 2}, 20))
	f.Add(bytes.Repeat([]byte{0, 1, 1, 10, 10, 10, 1, 20, 0, 3, 3, 0, 0, 5, 5, 1, 2, 3}, 15))
	f.Add(bytes.Repeat([]byte{3, 3, 1, 0, 200, 7, 5, 1, 1, 3, 20, 1, 2, 5, 5, 5}, 20))
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, want := fuzzStream(data)
		a := New()
		half := len(entries) / 2
		var b *Machine
		for i, e := range entries {
			if i == half {
				snap := snapshotOf(t, a)
				b = restoreFrom(t, snap)
				if again := snapshotOf(t, b); !bytes.Equal(again, snap) {
					t.Fatalf("entry %d: snapshot, restore, snapshot differs", i)
				}
			}
			got := a.Apply(e)
			if !reflect.DeepEqual(got, want[i]) {
				t.Fatalf("entry %d: results differ between machines:\n%s", i, cmp.Diff(want[i], got))
			}
			if b != nil {
				if got := b.Apply(e); !reflect.DeepEqual(got, want[i]) {
					t.Fatalf("entry %d: restored machine decides differently:\n%s", i, cmp.Diff(want[i], got))
				}
			}
		}
		final := snapshotOf(t, a)
		if b != nil && !bytes.Equal(snapshotOf(t, b), final) {
			t.Fatal("restored machine ends with a different snapshot")
		}
		if again := snapshotOf(t, restoreFrom(t, final)); !bytes.Equal(again, final) {
			t.Fatalf("final snapshot does not round-trip (%d entries)", len(entries))
		}
	})
}
