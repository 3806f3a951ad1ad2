package web

import (
	"math"
	"strings"
	"sync"
	"time"

	"github.com/leasehold/leasehold/cluster"
)

// trackedForSeries is how many of the node's busiest keys get a time
// series: each sample reads that many from the node's summary.
const trackedForSeries = 64

// seriesStore keeps the console's time series in memory: per-second rates
// of admitted tokens and denials, over every key and for each of the
// busiest keys, for the last SeriesLength samples. A key that leaves the
// busiest keys has gaps, and is forgotten once it has none left to show.
// Nothing survives a restart. It is safe for concurrent use.
type seriesStore struct {
	length   int
	interval time.Duration

	mu struct {
		sync.Mutex
		count uint64    // samples taken
		times []int64   // ring: sample times, Unix ms
		last  time.Time // the last sample's time
		total keySeries
		keys  map[string]*keySeries
	}
}

// keySeries is one key's (or the total's) rings, aligned with times: NaN
// where the rate is unknown.
type keySeries struct {
	admitted, denied []float64
	// The counts at the last sample, and the summary stay they belong to.
	serial         uint64
	lastA, lastD   uint64
	known          bool
	lastSeen       uint64 // the sample count when the key was last present
	weight, errBnd float64
}

func newKeySeries(n int) *keySeries {
	ks := &keySeries{admitted: make([]float64, n), denied: make([]float64, n)}
	for i := range n {
		ks.admitted[i], ks.denied[i] = math.NaN(), math.NaN()
	}
	return ks
}

func newSeriesStore(length int, interval time.Duration) *seriesStore {
	s := &seriesStore{length: length, interval: interval}
	s.mu.times = make([]int64, length)
	s.mu.total = *newKeySeries(length)
	s.mu.keys = map[string]*keySeries{}
	return s
}

// add records a sample of activity taken at now.
func (s *seriesStore) add(now time.Time, act cluster.Activity) {
	s.mu.Lock()
	defer s.mu.Unlock()
	dt := s.interval.Seconds()
	if !s.mu.last.IsZero() {
		dt = now.Sub(s.mu.last).Seconds()
	}
	if dt <= 0 {
		return
	}
	s.mu.last = now
	pos := int(s.mu.count % uint64(s.length))
	s.mu.count++
	s.mu.times[pos] = now.UnixMilli()
	s.mu.total.record(pos, 0, act.Admitted, act.Denied, dt)
	for _, k := range act.Keys {
		ks := s.mu.keys[k.Key]
		if ks == nil {
			ks = newKeySeries(s.length)
			s.mu.keys[k.Key] = ks
		}
		ks.record(pos, k.Serial, k.Admitted, k.Denied, dt)
		ks.lastSeen = s.mu.count
		ks.weight, ks.errBnd = k.Weight, k.WeightErr
	}
	for key, ks := range s.mu.keys {
		if ks.lastSeen == s.mu.count {
			continue
		}
		ks.admitted[pos], ks.denied[pos], ks.known = math.NaN(), math.NaN(), false
		if s.mu.count-ks.lastSeen >= uint64(s.length) {
			delete(s.mu.keys, key)
		}
	}
}

// record puts the rates since the last sample at pos: unknown if the key
// was not in the same summary stay then.
func (ks *keySeries) record(pos int, serial, admitted, denied uint64, dt float64) {
	if ks.known && ks.serial == serial && admitted >= ks.lastA && denied >= ks.lastD {
		ks.admitted[pos] = float64(admitted-ks.lastA) / dt
		ks.denied[pos] = float64(denied-ks.lastD) / dt
	} else {
		ks.admitted[pos], ks.denied[pos] = math.NaN(), math.NaN()
	}
	ks.serial, ks.lastA, ks.lastD, ks.known = serial, admitted, denied, true
}

// seriesView is a series in time order, for JSON: nil where unknown.
type seriesView struct {
	Admitted []*float64 `json:"admitted"`
	Denied   []*float64 `json:"denied"`
}

// recentWindow is how many samples a "now" rate averages over.
const recentWindow = 5

// order returns the ring positions of the samples in time order.
func (s *seriesStore) orderLocked() []int {
	n := min(s.mu.count, uint64(s.length))
	out := make([]int, n)
	start := s.mu.count - n
	for i := range n {
		out[i] = int((start + i) % uint64(s.length))
	}
	return out
}

func view(ks *keySeries, order []int) seriesView {
	v := seriesView{Admitted: make([]*float64, len(order)), Denied: make([]*float64, len(order))}
	for i, p := range order {
		if a := ks.admitted[p]; !math.IsNaN(a) {
			v.Admitted[i] = &a
		}
		if d := ks.denied[p]; !math.IsNaN(d) {
			v.Denied[i] = &d
		}
	}
	return v
}

// recent averages the known rates of the last recentWindow samples.
func recent(ring []float64, order []int) float64 {
	sum, n := 0.0, 0
	for i := len(order) - 1; i >= 0 && i >= len(order)-recentWindow; i-- {
		if v := ring[order[i]]; !math.IsNaN(v) {
			sum += v
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}

// snapshot is what the console shows of the series.
type snapshot struct {
	Times  []int64
	Total  seriesView
	TotalA float64 // admitted per second, recently
	TotalD float64
	Keys   map[string]keyView
}

type keyView struct {
	Series            seriesView
	Admitted, Denied  float64 // per second, recently
	Weight, WeightErr float64
}

// snapshot returns the series of keys (those it has), in time order.
func (s *seriesStore) snapshot(keys []string) snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	order := s.orderLocked()
	out := snapshot{Times: make([]int64, len(order)), Keys: map[string]keyView{}}
	for i, p := range order {
		out.Times[i] = s.mu.times[p]
	}
	out.Total = view(&s.mu.total, order)
	out.TotalA, out.TotalD = recent(s.mu.total.admitted, order), recent(s.mu.total.denied, order)
	for _, k := range keys {
		if ks := s.mu.keys[k]; ks != nil {
			out.Keys[k] = keyView{Series: view(ks, order), Admitted: recent(ks.admitted, order),
				Denied: recent(ks.denied, order), Weight: ks.weight, WeightErr: ks.errBnd}
		}
	}
	return out
}

// modelOf returns the model of a key named scope:model (the part after the
// first ':', up to the next ':' if any: "acme:gpt-4.1:output" is gpt-4.1),
// or "" for a key without ':'.
func modelOf(key string) string {
	_, rest, ok := strings.Cut(key, ":")
	if !ok {
		return ""
	}
	model, _, _ := strings.Cut(rest, ":")
	return model
}
