package fsm

import (
	"slices"
	"sort"
)

// session is the dedup table of one client (invariant 4): the results of its
// recent commands by sequence number, so a retried command returns its first
// result instead of applying twice.
type session struct {
	client   string
	lastSeen int64 // log time of its last command
	// floor: every seq below it has been forgotten; a command with such a
	// seq gets StatusStale and is not applied.
	floor   uint64
	results []seqResult // ascending seq, all >= floor
	// index is the session's position in Machine.sessionOrder. It is not
	// in snapshots, so it may change while a Capture holds the record.
	index int
	gen   uint64 // see Machine.gen
}

type seqResult struct {
	seq uint64
	res Result
}

// session finds the dedup state for d. If d was applied before it returns its
// first result and seen; if d is older than anything remembered, a Stale result
// and seen. A command with an empty client id is not deduplicated.
func (m *Machine) session(d *decoder) (s *session, first Result, seen bool) {
	if len(d.clientID) == 0 {
		return nil, Result{}, false
	}
	s, ok := m.sessions[string(d.clientID)]
	switch {
	case !ok:
		s = &session{client: string(d.clientID), index: len(m.sessionOrder), gen: m.gen}
		m.sessions[s.client] = s
		m.sessionOrder = append(m.sessionOrder, s)
	case s.gen != m.gen:
		s = m.ownSession(s) // a Capture may hold it
	}
	s.lastSeen = m.now
	if d.seq < s.floor {
		return s, Result{Status: StatusStale, Time: m.now,
			Message: "sequence number is older than every result kept for this client; it was not applied again"}, true
	}
	if i, ok := s.find(d.seq); ok {
		return s, s.results[i].res, true
	}
	return s, Result{}, false
}

// ownSession replaces s, which a Capture may hold, with a copy that the caller
// may change, and returns the copy.
func (m *Machine) ownSession(s *session) *session {
	c := &session{client: s.client, lastSeen: s.lastSeen, floor: s.floor,
		results: slices.Clone(s.results), index: s.index, gen: m.gen}
	m.sessions[c.client] = c
	m.sessionOrder[c.index] = c
	return c
}

func (s *session) find(seq uint64) (int, bool) {
	i := sort.Search(len(s.results), func(i int) bool { return s.results[i].seq >= seq })
	return i, i < len(s.results) && s.results[i].seq == seq
}

// remember stores r as the result of seq, then forgets results the client has
// acknowledged and any beyond MaxResultsPerClient, oldest first.
func (s *session) remember(seq, ackedBelow uint64, r Result) {
	i, _ := s.find(seq)
	if i == len(s.results) {
		s.results = append(s.results, seqResult{seq, r})
	} else {
		s.results = append(s.results, seqResult{})
		copy(s.results[i+1:], s.results[i:])
		s.results[i] = seqResult{seq, r}
	}
	drop := 0
	if ackedBelow > s.floor {
		s.floor = ackedBelow
		drop, _ = s.find(ackedBelow)
	}
	if over := len(s.results) - drop - MaxResultsPerClient; over > 0 {
		drop += over
		s.floor = s.results[drop-1].seq + 1
	}
	if drop > 0 {
		n := copy(s.results, s.results[drop:])
		clear(s.results[n:])
		s.results = s.results[:n]
	}
}

// removeSession forgets an idle client; the last session moves into its place.
func (m *Machine) removeSession(s *session) {
	last := len(m.sessionOrder) - 1
	moved := m.sessionOrder[last]
	m.sessionOrder[s.index] = moved
	moved.index = s.index
	m.sessionOrder[last] = nil
	m.sessionOrder = m.sessionOrder[:last]
	delete(m.sessions, s.client)
}
