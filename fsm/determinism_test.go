package fsm

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var streamSeed = flag.Uint64("fsm.seed", 0, "run the random-stream tests with only this seed (0: the fixed seeds and one random one)")

// streamSeeds returns the seeds the random-stream tests run: a fixed set plus
// one drawn at random, each logged so that a failure can be replayed with
// -fsm.seed.
func streamSeeds(t *testing.T) []uint64 {
	if *streamSeed != 0 {
		return []uint64{*streamSeed}
	}
	return []uint64{1, 2, 3, rand.Uint64()}
}

// streamGen writes a random but realistic stream of log entries: limits set
// and deleted on a small key space, acquires (some invalid), releases of the
// leases granted so far (some wrong), retries, advancing acknowledgements,
// batches, and log-time stamps that mostly move forward, sometimes jump past
// every expiry, and sometimes go backwards.
//
// It applies each entry to its own machine as it goes, to learn which leases
// were granted; the stream is therefore a function of the seed alone (given a
// deterministic machine), and other machines fed the same entries must decide
// the same.
type streamGen struct {
	rng     *rand.Rand
	m       *Machine
	now     int64 // the highest stamp so far
	keys    []string
	limits  []Limit // a pool, so that keys share definitions
	clients []*genClient
	leases  []genLease
	seen    map[uint64]bool // lease ids already in leases
}

type genClient struct {
	id    string
	seq   uint64
	acked uint64
	sent  []Command // recent commands, for retries
}

type genLease struct {
	client  string
	id      uint64
	granted []int64
}

func newStreamGen(seed uint64) *streamGen {
	g := &streamGen{
		rng:  rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		m:    New(),
		now:  int64(time.Hour),
		seen: make(map[uint64]bool),
	}
	for i := range 10 {
		g.keys = append(g.keys, fmt.Sprintf("k%d", i))
	}
	for i := range 4 {
		g.clients = append(g.clients, &genClient{id: fmt.Sprintf("client-%d", i)})
	}
	for range 8 {
		g.limits = append(g.limits, g.randLimit())
	}
	// At least one limit that may owe, for the Charges to go into debt.
	g.limits[0] = Limit{Algorithm: TokenBucket, Limit: 1 + g.rng.Int64N(20), Period: time.Second, MaxDebt: 1 + g.rng.Int64N(40)}
	return g
}

func (g *streamGen) pick(n int) int { return g.rng.IntN(n) }

// chance returns true with probability pct percent.
func (g *streamGen) chance(pct int) bool { return g.rng.IntN(100) < pct }

func (g *streamGen) dur(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(g.rng.Int64N(int64(hi-lo)+1))
}

func (g *streamGen) randLimit() Limit {
	maxLease := []time.Duration{0, 200 * time.Millisecond, time.Second, 3 * time.Second}[g.pick(4)]
	switch r := g.pick(100); {
	case r < 45:
		l := Limit{Algorithm: TokenBucket, Limit: 1 + g.rng.Int64N(20), MaxLease: maxLease,
			Period: []time.Duration{100 * time.Millisecond, time.Second, 5 * time.Second}[g.pick(3)]}
		if g.chance(50) {
			l.Burst = 1 + g.rng.Int64N(40)
		}
		l.Strict = g.chance(25)
		if g.chance(40) {
			l.MaxDebt = g.rng.Int64N(40)
		}
		return l
	case r < 75:
		l := Limit{Algorithm: SlidingWindow, Limit: 1 + g.rng.Int64N(30), MaxLease: maxLease,
			Period: []time.Duration{500 * time.Millisecond, 2 * time.Second, 10 * time.Second}[g.pick(3)]}
		if g.chance(50) {
			l.Slots = 1 + int32(g.pick(16))
		}
		if g.chance(40) {
			// Counted in more buckets than slots, as the API defines windows.
			l.Buckets = max(l.Slots, DefaultSlots) + int32(g.pick(20))
		}
		return l
	case r < 90:
		return Limit{Algorithm: Concurrency, Limit: 1 + g.rng.Int64N(6), MaxLease: maxLease}
	}
	// Invalid, in one of several ways.
	l := Limit{Algorithm: TokenBucket, Limit: 5, Period: time.Second}
	switch g.pick(7) {
	case 6:
		l.MaxDebt = -1 - g.rng.Int64N(3)
	case 0:
		l.Limit = -g.rng.Int64N(3)
	case 1:
		l.Period = -time.Second
	case 2:
		l.Algorithm = Algorithm([]int{0, 4, 9}[g.pick(3)])
	case 3:
		l.Algorithm, l.Slots = SlidingWindow, 65
	case 4:
		l.MaxLease = 2 * time.Minute
	case 5:
		l.Burst = -1
	}
	return l
}

func (g *streamGen) limit() Limit {
	if g.chance(80) {
		return g.limits[g.pick(len(g.limits))]
	}
	return g.randLimit()
}

// stamp returns the next entry's log-time stamp.
func (g *streamGen) stamp() int64 {
	switch r := g.pick(100); {
	case r < 3: // from the past: must be clamped
		return g.now - int64(g.dur(0, 5*time.Second))
	case r < 5: // a long pause: leases, keys and sessions expire
		g.now += int64(g.dur(SessionTTL+time.Second, 2*SessionTTL))
	case r < 25:
		// Same stamp as the last entry.
	default:
		g.now += int64(g.dur(1, 3*time.Second))
	}
	return g.now
}

// client returns a client for the next command, nil for no client id.
func (g *streamGen) client() *genClient {
	if g.chance(10) {
		return nil
	}
	return g.clients[g.pick(len(g.clients))]
}

// stamp a new (client, seq) on a command, and acknowledge some replies.
func (g *streamGen) sequence(c *genClient) (id string, seq, acked uint64) {
	if c == nil {
		return "", 0, 0
	}
	c.seq++
	if g.chance(30) {
		// The client has every reply so far (the generator applied
		// them), so it may acknowledge anything below its new seq.
		c.acked += g.rng.Uint64N(c.seq - c.acked + 1)
	}
	return c.id, c.seq, c.acked
}

func (g *streamGen) remember(c *genClient, cmd Command) {
	if c == nil {
		return
	}
	c.sent = append(c.sent, cmd)
	if len(c.sent) > 300 {
		c.sent = c.sent[100:]
	}
}

func (g *streamGen) acquire() Command {
	c := g.client()
	id, seq, acked := g.sequence(c)
	a := &Acquire{ClientID: id, Seq: seq, AckedBelow: acked}
	n := 1 + g.pick(3)
	perm := g.rng.Perm(len(g.keys))
	for i := range n {
		it := Item{Key: g.keys[perm[i]], Count: 1 + g.rng.Int64N(5)}
		if g.chance(50) {
			it.Want = it.Count + g.rng.Int64N(20)
		}
		if g.chance(50) {
			l := g.limit()
			it.Limit = &l
		}
		a.Items = append(a.Items, it)
	}
	if g.chance(70) {
		a.TTL = g.dur(1, 3*time.Second)
	} else if g.chance(50) {
		a.Span = g.dur(0, 300*time.Millisecond) // a central grant counted over a span
	}
	if g.chance(35) {
		// A sliding window's lease in pieces (one item, a window, a TTL;
		// any other acquire ignores it), maybe continuing the last one.
		a.Paced = true
		if g.chance(50) {
			a.PacedAfter = g.now + int64(g.dur(0, 3*time.Second)) - int64(time.Second)
		}
	}
	if g.chance(6) {
		it := &a.Items[0]
		switch g.pick(9) {
		case 0:
			it.Key = ""
		case 1:
			it.Key = strings.Repeat("x", 600)
		case 2:
			it.Count = 0
		case 3:
			it.Count = -1
		case 4:
			a.TTL = -time.Second
		case 5:
			a.Items = append(a.Items, a.Items[0])
		case 6:
			it.Want = it.Count - 1
		case 7:
			a.Items = nil
		case 8:
			for len(a.Items) <= MaxItems {
				a.Items = append(a.Items, Item{Key: fmt.Sprintf("many-%d", len(a.Items)), Count: 1, Limit: &g.limits[0]})
			}
		}
	}
	g.remember(c, a)
	return a
}

func (g *streamGen) release() Command {
	c := g.client()
	r := &Release{}
	var l genLease
	if len(g.leases) > 0 && !g.chance(5) {
		l = g.leases[g.pick(len(g.leases))]
		r.LeaseID = l.id
	} else {
		r.LeaseID = g.rng.Uint64N(1000) // most likely unknown
	}
	if c == nil || g.chance(85) {
		// Mostly the owner; otherwise whoever c is.
		for _, cl := range g.clients {
			if cl.id == l.client {
				c = cl
			}
		}
		if l.client == "" {
			c = nil
		}
	}
	r.ClientID, r.Seq, r.AckedBelow = g.sequence(c)
	switch p := g.pick(100); {
	case p < 40:
	case p < 80:
		for _, n := range l.granted {
			r.Unused = append(r.Unused, g.rng.Int64N(n+1))
		}
	case p < 90:
		r.Unused = make([]int64, len(l.granted)+1)
	default:
		for _, n := range l.granted {
			r.Unused = append(r.Unused, []int64{-1, n + 1}[g.pick(2)])
		}
	}
	g.remember(c, r)
	return r
}

// charge returns a Charge of 1 to 3 keys (some invalid).
func (g *streamGen) charge() Command {
	c := g.client()
	id, seq, acked := g.sequence(c)
	ch := &Charge{ClientID: id, Seq: seq, AckedBelow: acked}
	perm := g.rng.Perm(len(g.keys))
	for i := range 1 + g.pick(3) {
		it := ChargeItem{Key: g.keys[perm[i]], Tokens: 1 + g.rng.Int64N(30)}
		if g.chance(60) {
			l := g.limit()
			it.Limit = &l
		}
		ch.Items = append(ch.Items, it)
	}
	if g.chance(6) {
		switch g.pick(5) {
		case 0:
			ch.Items[0].Key = ""
		case 1:
			ch.Items[0].Tokens = -g.rng.Int64N(2)
		case 2:
			ch.Items = append(ch.Items, ch.Items[0])
		case 3:
			ch.Items = nil
		case 4:
			for len(ch.Items) <= MaxItems {
				ch.Items = append(ch.Items, ChargeItem{Key: fmt.Sprintf("many-%d", len(ch.Items)), Tokens: 1, Limit: &g.limits[0]})
			}
		}
	}
	g.remember(c, ch)
	return ch
}

// restrict returns a Restrict of 1 to 3 keys (some invalid): blocks, lowers
// or both.
func (g *streamGen) restrict() Command {
	c := g.client()
	id, seq, acked := g.sequence(c)
	r := &Restrict{ClientID: id, Seq: seq, AckedBelow: acked}
	perm := g.rng.Perm(len(g.keys))
	for i := range 1 + g.pick(3) {
		it := RestrictItem{Key: g.keys[perm[i]], Remaining: NoRemaining}
		switch g.pick(3) {
		case 0:
			it.Remaining = g.rng.Int64N(20)
		case 1:
			it.BlockFor = g.dur(1, 5*time.Second)
		default:
			it.Remaining, it.BlockFor = g.rng.Int64N(5), g.dur(1, time.Second)
		}
		if g.chance(60) {
			l := g.limit()
			it.Limit = &l
		}
		r.Items = append(r.Items, it)
	}
	if g.chance(6) {
		switch g.pick(4) {
		case 0:
			r.Items[0].Remaining = -2
		case 1:
			r.Items[0].BlockFor = -time.Second
		case 2:
			r.Items[0].Remaining, r.Items[0].BlockFor = NoRemaining, 0
		case 3:
			r.Items[0].BlockFor = 48 * time.Hour // capped at MaxBlock
		}
	}
	g.remember(c, r)
	return r
}

// extend returns an Extend of a lease granted so far (mostly by its owner),
// or of an unknown one.
func (g *streamGen) extend() Command {
	e := &Extend{TTL: g.dur(0, 4*time.Second)}
	var c *genClient
	if len(g.leases) > 0 && !g.chance(5) {
		// Mostly the latest: older ones have likely expired.
		l := g.leases[len(g.leases)-1]
		if g.chance(40) {
			l = g.leases[len(g.leases)-1-g.pick(min(len(g.leases), 3))]
		}
		if g.chance(10) {
			l = g.leases[g.pick(len(g.leases))]
		}
		e.LeaseID = l.id
		for _, cl := range g.clients {
			if cl.id == l.client {
				c = cl
			}
		}
	} else {
		e.LeaseID = g.rng.Uint64N(1000)
	}
	if c == nil || g.chance(5) {
		c = g.clients[g.pick(len(g.clients))]
	}
	if g.chance(3) {
		e.TTL = -time.Second
	}
	e.ClientID, e.Seq, e.AckedBelow = g.sequence(c)
	g.remember(c, e)
	return e
}

// retry returns an earlier command of some client: mostly unchanged, a
// retry; sometimes with the same seq and another body, a client's bug.
func (g *streamGen) retry() Command {
	c := g.clients[g.pick(len(g.clients))]
	if len(c.sent) == 0 {
		return g.acquire()
	}
	// Mostly a recent one.
	i := len(c.sent) - 1 - g.pick(min(len(c.sent), 5))
	if g.chance(20) {
		i = g.pick(len(c.sent))
	}
	if !g.chance(15) {
		return c.sent[i]
	}
	switch cmd := c.sent[i].(type) {
	case *Acquire:
		a := *cmd
		a.TTL += time.Millisecond
		return &a
	case *Release:
		r := *cmd
		r.Unused = append(slices.Clone(r.Unused), 0)
		return &r
	case *Charge:
		ch := *cmd
		ch.Items = slices.Clone(ch.Items)
		if len(ch.Items) > 0 {
			ch.Items[0].Tokens++
		}
		return &ch
	case *Restrict:
		r := *cmd
		r.Items = slices.Clone(r.Items)
		if len(r.Items) > 0 {
			r.Items[0].BlockFor += time.Millisecond
		}
		return &r
	case *Extend:
		e := *cmd
		e.TTL += time.Millisecond
		return &e
	}
	return c.sent[i]
}

func (g *streamGen) command() Command {
	switch r := g.pick(100); {
	case r < 8:
		return &SetLimit{Key: g.keys[g.pick(len(g.keys))], Limit: g.limit()}
	case r < 10:
		if g.pick(4) == 0 { // in bulk: every key, or those of "k1"..
			return &DeleteLimits{Prefix: []string{"", "k", "k1"}[g.pick(3)],
				StartAfter: []string{"", "k3"}[g.pick(2)], UnpinnedOnly: g.pick(3) != 0}
		}
		return &DeleteLimit{Key: g.keys[g.pick(len(g.keys))]}
	case r < 60:
		return g.acquire()
	case r < 74:
		return g.release()
	case r < 79:
		return g.charge()
	case r < 82:
		return g.restrict()
	case r < 87:
		return g.extend()
	default:
		return g.retry()
	}
}

// next returns the next entry and the driver machine's results for it.
func (g *streamGen) next() ([]byte, []Result) {
	var cmds []Command
	if g.chance(10) {
		for range 2 + g.pick(4) {
			cmds = append(cmds, g.command())
		}
	} else {
		cmds = append(cmds, g.command())
	}
	var entry []byte
	if len(cmds) == 1 {
		entry = Encode(nil, g.stamp(), cmds[0])
	} else {
		entry = Encode(nil, g.stamp(), &Batch{Commands: cmds})
	}
	res := g.m.Apply(entry)
	for i, c := range cmds {
		a, ok := c.(*Acquire)
		if !ok || res[i].Status != StatusOK || res[i].LeaseID == 0 || g.seen[res[i].LeaseID] {
			continue
		}
		g.seen[res[i].LeaseID] = true
		l := genLease{client: a.ClientID, id: res[i].LeaseID}
		for _, it := range res[i].Items {
			l.granted = append(l.granted, it.Granted)
		}
		g.leases = append(g.leases, l)
		if len(g.leases) > 200 {
			g.leases = g.leases[50:]
		}
	}
	return entry, res
}

// stream returns n entries from seed and the results a machine gives for them.
func stream(seed uint64, n int) (entries [][]byte, results [][]Result) {
	g := newStreamGen(seed)
	for range n {
		e, r := g.next()
		entries = append(entries, e)
		results = append(results, r)
	}
	return entries, results
}

// sameResults fails the test if got differs from want.
func sameResults(t *testing.T, where string, want, got []Result) {
	t.Helper()
	if !reflect.DeepEqual(want, got) {
		t.Fatalf("%s: results differ (-want +got):\n%s", where, cmp.Diff(want, got))
	}
}

// statusCounts summarises a stream's results, to show it exercises what it
// should.
func statusCounts(results [][]Result) map[Status]int {
	counts := make(map[Status]int)
	for _, rs := range results {
		for _, r := range rs {
			counts[r.Status]++
		}
	}
	return counts
}

// budgetCoverage counts what a stream's Charges, Restricts and Extends did:
// charges in debt and forgiven at a cap, restricts that took tokens away,
// extends that moved a lease's expiry, and all three answered from the
// dedup table or refused as invalid.
func budgetCoverage(t *testing.T, entries [][]byte, results [][]Result) map[string]int {
	t.Helper()
	counts := make(map[string]int)
	for i, e := range entries {
		_, c, err := Decode(e)
		if err != nil {
			t.Fatal(err)
		}
		cmds := []Command{c}
		if b, ok := c.(*Batch); ok {
			cmds = b.Commands
		}
		for j, c := range cmds {
			r := results[i][j]
			name := fmt.Sprintf("%T", c)[5:]
			if r.Status.Invalid() || r.Status == StatusNoLimit {
				counts[name+" refused"]++
				continue
			}
			for k, it := range r.Items {
				if ch, ok := c.(*Charge); ok {
					if it.Granted < ch.Items[k].Tokens {
						counts["Charge forgiven"]++
					}
					if it.Remaining < 0 && it.Granted > 0 {
						counts["Charge into debt"]++
					}
				}
				if name == "Restrict" && it.Granted > 0 {
					counts["Restrict took"]++
				}
			}
			if name == "Extend" && r.Status == StatusOK {
				counts["Extend ok"]++
			}
		}
	}
	return counts
}

// Invariant 5: machines fed the same entries decide the same and write
// byte-identical snapshots.
func TestDeterminism(t *testing.T) {
	const n = 5000
	for _, seed := range streamSeeds(t) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Logf("seed %d (replay with -fsm.seed=%d)", seed, seed)
			entries, results := stream(seed, n)
			counts := statusCounts(results)
			t.Logf("statuses: %v", counts)
			budget := budgetCoverage(t, entries, results)
			t.Logf("budget commands: %v", budget)
			for _, what := range []string{"Charge forgiven", "Charge into debt", "Restrict took", "Extend ok",
				"Charge refused", "Restrict refused", "Extend refused"} {
				if budget[what] == 0 {
					t.Errorf("the stream produced no %q: it does not exercise what it should", what)
				}
			}
			for _, s := range []Status{StatusOK, StatusDenied, StatusNoLimit, StatusStale, StatusLeaseGone,
				StatusInvalidKey, StatusInvalidCount, StatusInvalidLimit, StatusInvalidTTL, StatusInvalidRequest,
				StatusSeqReused} {
				if counts[s] == 0 {
					t.Errorf("the stream produced no %v result: it does not exercise what it should", s)
				}
			}
			a, b := New(), New()
			for i, e := range entries {
				ra, rb := a.Apply(e), b.Apply(e)
				sameResults(t, fmt.Sprintf("entry %d, machine a", i), results[i], ra)
				sameResults(t, fmt.Sprintf("entry %d, machine b", i), results[i], rb)
				if i%1000 == 999 || i == len(entries)-1 {
					sa, sb := snapshotOf(t, a), snapshotOf(t, b)
					if !bytes.Equal(sa, sb) {
						t.Fatalf("after entry %d: snapshots differ", i)
					}
				}
			}
		})
	}
}

// A machine restored from a snapshot goes on exactly as the original.
func TestSnapshotRestoreContinues(t *testing.T) {
	const n = 3000
	for _, seed := range streamSeeds(t) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Logf("seed %d (replay with -fsm.seed=%d)", seed, seed)
			entries, _ := stream(seed, n)
			// Every state along the stream restores (every one of the
			// first 1000, every 7th after that, to stay fast under the
			// race detector), and snapshot, restore, snapshot is
			// byte-identical.
			m := New()
			for i, e := range entries {
				m.Apply(e)
				if i >= 1000 && i%7 != 0 {
					continue
				}
				snap := snapshotOf(t, m)
				r := New()
				if err := r.Restore(bytes.NewReader(snap)); err != nil {
					t.Fatalf("after entry %d: %v", i, err)
				}
				if !bytes.Equal(snapshotOf(t, r), snap) {
					t.Fatalf("after entry %d: snapshot, restore, snapshot is not byte-identical", i)
				}
			}
			// From random cuts, the restored machine goes on as the
			// original does.
			rng := rand.New(rand.NewPCG(seed, 1))
			cuts := []int{0, 1, n}
			for range 5 {
				cuts = append(cuts, rng.IntN(n+1))
			}
			for _, k := range cuts {
				orig := New()
				for _, e := range entries[:k] {
					orig.Apply(e)
				}
				snap := snapshotOf(t, orig)
				// Into a fresh machine, and into one that holds other
				// state already.
				fresh := restoreFrom(t, snap)
				used := New()
				for _, e := range entries[:min(k+50, n)] {
					used.Apply(e)
				}
				if err := used.Restore(bytes.NewReader(snap)); err != nil {
					t.Fatalf("cut %d: restore into a used machine: %v", k, err)
				}
				for _, m := range []*Machine{fresh, used} {
					if again := snapshotOf(t, m); !bytes.Equal(again, snap) {
						t.Fatalf("cut %d: snapshot, restore, snapshot is not byte-identical", k)
					}
				}
				for i, e := range entries[k:] {
					want := orig.Apply(e)
					sameResults(t, fmt.Sprintf("cut %d, entry %d, fresh", k, k+i), want, fresh.Apply(e))
					sameResults(t, fmt.Sprintf("cut %d, entry %d, used", k, k+i), want, used.Apply(e))
				}
				final := snapshotOf(t, orig)
				for _, m := range []*Machine{fresh, used} {
					if !bytes.Equal(snapshotOf(t, m), final) {
						t.Fatalf("cut %d: final snapshots differ", k)
					}
				}
			}
		})
	}
}

// withCRC replaces the checksum at the end of a snapshot with the right one
// for the bytes before it, so that a test can corrupt the content alone.
func withCRC(snap []byte) []byte {
	out := bytes.Clone(snap)
	n := len(out) - 4
	sum := crc32.Checksum(out[:n-2], crc32.MakeTable(crc32.Castagnoli))
	out[n], out[n+1], out[n+2], out[n+3] = byte(sum>>24), byte(sum>>16), byte(sum>>8), byte(sum)
	return out
}

func TestRestoreRejectsCorruption(t *testing.T) {
	entries, _ := stream(7, 1500)
	src := New()
	for _, e := range entries {
		src.Apply(e)
	}
	good := snapshotOf(t, src)
	if len(good) < 200 {
		t.Fatalf("snapshot of %d bytes: too small to corrupt usefully", len(good))
	}

	// The victim holds state of its own, which a failed restore must keep.
	victim := New()
	for _, e := range entries[:700] {
		victim.Apply(e)
	}
	before := snapshotOf(t, victim)
	// Rejected: a corrupt snapshot, with an error that wraps wantErr
	// (ErrCorrupt, or io.ErrUnexpectedEOF for a short one).
	reject := func(t *testing.T, name string, snap []byte, wantErrs ...error) {
		t.Helper()
		err := victim.Restore(bytes.NewReader(snap))
		if err == nil {
			t.Fatalf("%s: restored without error", name)
		}
		ok := false
		for _, w := range wantErrs {
			ok = ok || errors.Is(err, w)
		}
		if !ok {
			t.Errorf("%s: error %v, want one wrapping one of %v", name, err, wantErrs)
		}
		if after := snapshotOf(t, victim); !bytes.Equal(after, before) {
			t.Fatalf("%s: a failed restore changed the machine", name)
		}
	}

	t.Run("truncated", func(t *testing.T) {
		cuts := []int{0, 1, 3, 4, 5, len(good) - 5, len(good) - 1}
		for i := 6; i < len(good)-5; i += 1 + i/40 {
			cuts = append(cuts, i)
		}
		for _, n := range cuts {
			reject(t, fmt.Sprintf("first %d of %d bytes", n, len(good)), good[:n], io.ErrUnexpectedEOF, ErrCorrupt)
		}
	})
	t.Run("flipped byte", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(7, 7))
		positions := []int{5, 6, len(good) - 6, len(good) - 5, len(good) - 1}
		for range 300 {
			positions = append(positions, 5+rng.IntN(len(good)-5))
		}
		for _, p := range positions {
			bad := bytes.Clone(good)
			bad[p] ^= 1 << rng.IntN(8)
			// A flipped length can run past the end; anything else
			// fails the checksum or the record's own checks.
			reject(t, fmt.Sprintf("byte %d flipped", p), bad, ErrCorrupt, io.ErrUnexpectedEOF)
		}
	})
	t.Run("wrong magic", func(t *testing.T) {
		bad := bytes.Clone(good)
		copy(bad, "LHSX")
		reject(t, "magic LHSX", bad, ErrCorrupt)
		reject(t, "not a snapshot at all", []byte("hello, world: this is no snapshot"), ErrCorrupt)
	})
	t.Run("unknown version", func(t *testing.T) {
		for _, v := range []byte{0, snapshotVersion + 1, 255} {
			bad := bytes.Clone(good)
			bad[4] = v
			reject(t, fmt.Sprintf("version %d", v), bad, ErrCorrupt)
		}
	})
	t.Run("valid checksum, bad content", func(t *testing.T) {
		header := []byte("LHSN\x01")
		end := []byte{recEnd, 4, 0, 0, 0, 0}
		meta := []byte{recMeta, 2, 0x08, 0x01} // now = 1
		cases := map[string][]byte{
			"no meta record":      append(bytes.Clone(header), end...),
			"unknown record kind": append(append(append(bytes.Clone(header), meta...), 9, 0), end...),
			// A key (field 1 "k", field 2 limit id 1) whose limit was
			// never defined.
			"key with an undefined limit": append(append(append(bytes.Clone(header), meta...),
				recKey, 5, 0x0a, 0x01, 'k', 0x10, 0x01), end...),
		}
		for name, snap := range cases {
			reject(t, name, withCRC(snap), ErrCorrupt)
		}
		// The same construction with nothing wrong restores.
		if err := New().Restore(bytes.NewReader(withCRC(append(append(bytes.Clone(header), meta...), end...)))); err != nil {
			t.Errorf("a minimal valid snapshot: %v", err)
		}
	})
	// And the good one still restores over the victim.
	if err := victim.Restore(bytes.NewReader(good)); err != nil {
		t.Fatalf("good snapshot: %v", err)
	}
	if !bytes.Equal(snapshotOf(t, victim), good) {
		t.Fatal("good snapshot: restored machine snapshots differently")
	}
}
