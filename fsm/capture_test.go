package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
)

// captureBytes writes c and returns the bytes, checking the count WriteTo
// reports.
func captureBytes(t testing.TB, c *Capture) []byte {
	t.Helper()
	var buf bytes.Buffer
	n, err := c.WriteTo(&buf)
	if err != nil {
		t.Fatalf("capture WriteTo: %v", err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("capture WriteTo reported %d bytes, wrote %d", n, buf.Len())
	}
	return buf.Bytes()
}

// A Capture writes the golden v4 bytes, exactly what Snapshot writes.
func TestCaptureGolden(t *testing.T) {
	golden, err := os.ReadFile(goldenV4)
	if err != nil {
		t.Fatalf("read the golden snapshot: %v", err)
	}
	c := buildGoldenV4(t).Capture()
	if got := captureBytes(t, c); !bytes.Equal(got, golden) {
		t.Fatal("a capture of the golden state differs from the golden file")
	}
	// And so does a capture of the restored golden state, which starts with
	// records of generation 0.
	if got := captureBytes(t, restoreFrom(t, golden).Capture()); !bytes.Equal(got, golden) {
		t.Fatal("a capture of the restored golden state differs from the golden file")
	}
}

// A Capture writes what Snapshot wrote at the moment of the capture, however
// much the machine applies after it, with several captures outstanding at
// once; capturing changes nothing the machine decides; and the captured bytes
// restore to a machine that goes on as the original.
func TestCaptureIsolation(t *testing.T) {
	const n = 3000
	for _, seed := range streamSeeds(t) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Logf("seed %d (replay with -fsm.seed=%d)", seed, seed)
			entries, results := stream(seed, n)
			rng := rand.New(rand.NewPCG(seed, 2))
			type held struct {
				at   int // entries applied when captured
				want []byte
				c    *Capture
			}
			var live []held
			check := func(h held, i int) {
				t.Helper()
				if got := captureBytes(t, h.c); !bytes.Equal(got, h.want) {
					t.Fatalf("capture taken after entry %d, written after entry %d: differs from the snapshot at the capture", h.at, i)
				}
			}
			m := New()
			captures := 0
			for i, e := range entries {
				if rng.IntN(40) == 0 {
					live = append(live, held{at: i, want: snapshotOf(t, m), c: m.Capture()})
					captures++
				}
				sameResults(t, fmt.Sprintf("entry %d", i), results[i], m.Apply(e))
				if len(live) > 0 && rng.IntN(10) == 0 {
					check(live[rng.IntN(len(live))], i)
				}
				if len(live) > 3 { // the oldest is persisted and released
					check(live[0], i)
					live[0].c.Release()
					live = live[1:]
				}
			}
			for _, h := range live {
				check(h, n)
			}
			t.Logf("%d captures", captures)
			// The driver machine, never captured, ends in the same state.
			if !bytes.Equal(snapshotOf(t, m), snapshotOf(t, streamMachine(entries))) {
				t.Fatal("a captured machine ends in another state than one never captured")
			}

			// Restore round trip from a capture taken mid-stream, with
			// the stream going on in between.
			k := n / 2
			orig := streamMachine(entries[:k])
			c := orig.Capture()
			for _, e := range entries[k : k+100] {
				orig.Apply(e)
			}
			snap := captureBytes(t, c)
			r := restoreFrom(t, snap)
			if !bytes.Equal(snapshotOf(t, r), snap) {
				t.Fatal("capture, restore, snapshot is not byte-identical")
			}
			for i, e := range entries[k:] {
				sameResults(t, fmt.Sprintf("restored from capture, entry %d", k+i), results[k+i], r.Apply(e))
			}
		})
	}
}

// streamMachine returns a new machine that applied entries.
func streamMachine(entries [][]byte) *Machine {
	m := New()
	for _, e := range entries {
		m.Apply(e)
	}
	return m
}

// WriteTo runs on another goroutine while the machine applies, as cluster's
// Persist does. Under the race detector this fails if Apply writes any memory
// a Capture reads (a record changed in place instead of copied).
func TestCaptureConcurrentApply(t *testing.T) {
	const n = 3000
	for _, seed := range streamSeeds(t) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Logf("seed %d (replay with -fsm.seed=%d)", seed, seed)
			entries, _ := stream(seed, n)
			m := streamMachine(entries[:n/3])
			for k := n / 3; k < n; k += n / 3 {
				want := snapshotOf(t, m)
				c := m.Capture()
				var (
					wg  sync.WaitGroup
					got [3][]byte
					err error
				)
				wg.Go(func() {
					for i := range got {
						var buf bytes.Buffer
						if _, e := c.WriteTo(&buf); e != nil {
							err = e
							return
						}
						got[i] = buf.Bytes()
					}
				})
				for _, e := range entries[k:min(k+n/3, n)] {
					m.Apply(e)
				}
				wg.Wait()
				c.Release()
				if err != nil {
					t.Fatal(err)
				}
				for i := range got {
					if !bytes.Equal(got[i], want) {
						t.Fatalf("capture after entry %d, write %d: differs from the snapshot at the capture", k, i)
					}
				}
			}
		})
	}
}

// A failing writer stops WriteTo with its error.
func TestCaptureWriteError(t *testing.T) {
	m := buildGolden(t)
	c := m.Capture()
	boom := errors.New("boom")
	if _, err := c.WriteTo(failingWriter{boom}); !errors.Is(err, boom) {
		t.Fatalf("WriteTo into a failing writer = %v; want %v", err, boom)
	}
}

type failingWriter struct{ err error }

func (w failingWriter) Write([]byte) (int, error) { return 0, w.err }
