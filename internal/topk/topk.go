// Package topk keeps the busiest keys of a stream in bounded memory: the
// space-saving summary of Metwally, Agrawal and El Abbadi ("Efficient
// computation of frequent and top-k elements in data streams", 2005), with
// exponential decay so that it ranks keys by recent activity rather than
// all-time totals.
//
// A Set of capacity k holds at most k keys. A key not in a full Set takes
// the place of the one with the least weight and inherits that weight as
// its possible over-count (Entry.Err); so every key whose decayed weight is
// above W/k, W the decayed weight of the whole stream, is in the Set, and
// each tracked key's weight is over-counted by at most its Err. Besides its
// weight, each tracked key counts exactly what happened to it since it
// entered the Set (Admitted, Denied), which is what rates are computed
// from.
//
// It imports only the standard library and reads no clock: the caller
// decays the Set on its own schedule.
package topk

import (
	"cmp"
	"slices"
	"strings"
)

// Entry is one tracked key.
type Entry struct {
	Key string
	// Weight is the key's decayed weight, an over-estimate by at most Err.
	Weight float64
	// Err bounds how much of Weight the key may have inherited from the key
	// it replaced.
	Err float64
	// Admitted and Denied count exactly what was added for the key since it
	// entered the Set (Serial tells one stay in the Set from another).
	Admitted, Denied uint64
	// Serial is unique to this stay of the key in the Set: a key evicted
	// and added again gets a new one, and its counts start again from 0.
	Serial uint64

	pos int // in Set.heap
}

// Set is a bounded summary of the busiest keys. The zero value is not
// usable: call New. A Set is not safe for concurrent use.
type Set struct {
	capacity int
	index    map[string]*Entry
	heap     []*Entry // min-heap by Weight
	serial   uint64
}

// New returns an empty Set that tracks at most capacity keys (at least 1).
func New(capacity int) *Set {
	capacity = max(capacity, 1)
	return &Set{capacity: capacity, index: make(map[string]*Entry, capacity), heap: make([]*Entry, 0, capacity)}
}

// Len returns the number of keys tracked.
func (s *Set) Len() int { return len(s.heap) }

// Add counts admitted and denied for key, and adds weight to its weight.
// key is copied only if the key enters the Set; a tracked key costs a map
// lookup and a heap step, no allocation.
func (s *Set) Add(key []byte, weight float64, admitted, denied uint64) {
	e, ok := s.index[string(key)]
	if !ok {
		e = s.admit(string(key))
	}
	e.Weight += weight
	e.Admitted += admitted
	e.Denied += denied
	s.down(e.pos)
}

// admit makes room for key and returns its new entry.
func (s *Set) admit(key string) *Entry {
	s.serial++
	if len(s.heap) < s.capacity {
		e := &Entry{Key: key, Serial: s.serial, pos: len(s.heap)}
		s.heap = append(s.heap, e)
		s.index[key] = e
		s.up(e.pos)
		return e
	}
	// Replace the least: the newcomer may have been as busy as it was.
	e := s.heap[0]
	delete(s.index, e.Key)
	*e = Entry{Key: key, Weight: e.Weight, Err: e.Weight, Serial: s.serial, pos: 0}
	s.index[key] = e
	return e
}

// Decay multiplies every weight (and its error bound) by f, in [0, 1]: the
// caller's schedule sets the half-life. Order is kept, so it costs one pass.
func (s *Set) Decay(f float64) {
	for _, e := range s.heap {
		e.Weight *= f
		e.Err *= f
	}
}

// Top appends to dst copies of the n tracked keys of greatest weight that
// contain substr (all keys if substr is ""), greatest first, and returns it.
func (s *Set) Top(dst []Entry, n int, substr string) []Entry {
	start := len(dst)
	for _, e := range s.heap {
		if substr == "" || strings.Contains(e.Key, substr) {
			dst = append(dst, *e)
		}
	}
	found := dst[start:]
	slices.SortFunc(found, func(a, b Entry) int {
		if c := cmp.Compare(b.Weight, a.Weight); c != 0 {
			return c
		}
		return strings.Compare(a.Key, b.Key)
	})
	if len(found) > n {
		dst = dst[:start+max(n, 0)]
	}
	return dst
}

// Each calls fn with every tracked entry, in no particular order. fn must
// not change the Set.
func (s *Set) Each(fn func(e *Entry)) {
	for _, e := range s.heap {
		fn(e)
	}
}

func (s *Set) less(i, j int) bool { return s.heap[i].Weight < s.heap[j].Weight }

func (s *Set) swap(i, j int) {
	s.heap[i], s.heap[j] = s.heap[j], s.heap[i]
	s.heap[i].pos, s.heap[j].pos = i, j
}

func (s *Set) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !s.less(i, p) {
			return
		}
		s.swap(i, p)
		i = p
	}
}

func (s *Set) down(i int) {
	n := len(s.heap)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		c := l
		if r := l + 1; r < n && s.less(r, l) {
			c = r
		}
		if !s.less(c, i) {
			return
		}
		s.swap(i, c)
		i = c
	}
}
