package fsm

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"slices"
	"sort"

	"google.golang.org/protobuf/encoding/protowire"
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
	seq    uint64
	digest digest // of the command that got res
	res    Result
}

// digest identifies the body of a command: the CRC-32C (Castagnoli) of its
// canonical form (appendCanonical), with bit 32 set, so that 0 means
// unknown: a result restored from a format v1 snapshot, which kept no
// digest. It is replicated state (in snapshots from v2 on): a function of
// the command alone, the same on every replica and build.
type digest uint64

// matches reports whether a command with digest d may be answered with a
// result remembered under r: the same body, or a result whose body is
// unknown (restored from v1), which matches every body as before digests.
func (r digest) matches(d digest) bool { return r == 0 || r == d }

// digest returns the digest of the command d holds, one with a client id:
// Acquire, Release, Charge, Extend or Restrict.
// It uses m's scratch buffer.
func (m *Machine) digest(d *decoder) digest {
	m.scratch = appendCanonical(m.scratch[:0], d)
	return digest(1<<32 | uint64(crc32.Checksum(m.scratch, castagnoli)))
}

// appendCanonical appends the canonical form of d's command body: its type;
// for an Acquire its TTL, and per item its key, count, want and inline limit
// if it has one; for a Release its lease id and unused counts; for a Charge
// per item its key, tokens and inline limit; for a Restrict per item its
// key, remaining, block and inline limit; for an Extend its lease id and TTL. Numbers are
// 8 bytes little-endian (a store each, where varints loop; CRC-32C of the
// longer bytes costs less than the loops), keys and lists are prefixed with
// their lengths. It leaves out what names the request (client id, seq) and
// what a retry of the same request may change (the log-time stamp,
// acked_below), and it reads decoded values, so two encodings of the same
// command (packed or not) have one canonical form.
func appendCanonical(b []byte, d *decoder) []byte {
	le := binary.LittleEndian
	b = append(b, byte(d.typ))
	switch d.typ {
	case TypeAcquire:
		b = le.AppendUint64(b, uint64(d.ttl))
		b = le.AppendUint64(b, uint64(len(d.items)))
		for i := range d.items {
			it := &d.items[i]
			b = le.AppendUint64(b, uint64(len(it.key)))
			b = append(b, it.key...)
			b = le.AppendUint64(b, uint64(it.count))
			b = le.AppendUint64(b, uint64(it.want))
			b = appendCanonicalLimit(b, it)
		}
		if d.paced || d.after != 0 {
			// Only when set: an acquire that is not paced keeps the
			// form it had before Paced existed.
			b = append(b, byte(protowire.EncodeBool(d.paced)))
			b = le.AppendUint64(b, uint64(d.after))
		}
		if d.span != 0 {
			// Likewise: a central acquire without a span keeps its
			// form. A marker byte no earlier field can put here.
			b = append(b, 's')
			b = le.AppendUint64(b, uint64(d.span))
		}
		// Not SpanBuckets: the leader sets it from the command level,
		// not the client, and it changes only the answer's TTL; a retry
		// across the level's rise is the same request and gets the
		// remembered answer.
	case TypeRelease:
		b = le.AppendUint64(b, d.leaseID)
		b = le.AppendUint64(b, uint64(len(d.unused)))
		for _, u := range d.unused {
			b = le.AppendUint64(b, uint64(u))
		}
	case TypeCharge, TypeRestrict:
		b = le.AppendUint64(b, uint64(len(d.items)))
		for i := range d.items {
			it := &d.items[i]
			b = le.AppendUint64(b, uint64(len(it.key)))
			b = append(b, it.key...)
			if d.typ == TypeCharge {
				b = le.AppendUint64(b, uint64(it.count))
			} else {
				b = le.AppendUint64(b, uint64(it.remaining))
				b = le.AppendUint64(b, uint64(it.block))
			}
			b = appendCanonicalLimit(b, it)
		}
	case TypeExtend:
		b = le.AppendUint64(b, d.leaseID)
		b = le.AppendUint64(b, uint64(d.ttl))
	}
	return b
}

// appendCanonicalLimit appends the canonical form of an item's inline limit:
// 0 for none; else 1 and its fields, or, when it has a MaxDebt, 2, the same
// fields and the MaxDebt, or, when it has Buckets, 3, the fields, the
// MaxDebt and the Buckets. A limit without debt or buckets has the form it
// had before they existed, so the digests of remembered results stay right
// across the upgrade (TestGoldenSnapshotV2).
func appendCanonicalLimit(b []byte, it *rawItem) []byte {
	if !it.hasLimit {
		return append(b, 0)
	}
	le := binary.LittleEndian
	l := &it.lim
	marker := byte(1)
	switch {
	case l.Buckets != 0:
		marker = 3
	case l.MaxDebt != 0:
		marker = 2
	}
	b = append(b, marker, byte(l.Algorithm), byte(protowire.EncodeBool(l.Strict)))
	b = le.AppendUint64(b, uint64(l.Limit))
	b = le.AppendUint64(b, uint64(l.Period))
	b = le.AppendUint64(b, uint64(l.Burst))
	b = le.AppendUint32(b, uint32(l.Slots))
	b = le.AppendUint64(b, uint64(l.MaxLease))
	if marker >= 2 {
		b = le.AppendUint64(b, uint64(l.MaxDebt))
	}
	if marker == 3 {
		b = le.AppendUint32(b, uint32(l.Buckets))
	}
	return b
}

// session finds the dedup state for d, whose body has digest dg. If d's seq
// was applied before it returns the first result and seen, or, if that
// result was for another body, a StatusSeqReused result and seen (the seq
// was reused: neither answer would be right, and nothing is applied); if d is
// older than anything remembered, a Stale result and seen. A command with an
// empty client id is not deduplicated.
func (m *Machine) session(d *decoder, dg digest) (s *session, first Result, seen bool) {
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
		if r := &s.results[i]; !r.digest.matches(dg) && !m.retriedWithSpan(d, r.digest) {
			return s, Result{Status: StatusSeqReused, Time: m.now, Message: fmt.Sprintf(
				"seq %d of this client_id was used for a different request; send each request with a new seq, "+
					"and a retry with the same body", d.seq)}, true
		}
		return s, s.results[i].res, true
	}
	return s, Result{}, false
}

// retriedWithSpan reports whether d is an Acquire with a span whose body
// without the span has digest rd: a retry of a request an earlier attempt
// of which was applied without its span (cluster leaves the span out while
// a replica may predate it, and the level may rise between attempts), so
// it gets that attempt's result instead of StatusSeqReused. A body that
// differs only in its span is no other request the limit could tell
// apart. Decided here, from the command and the remembered digest alone,
// so the retry costs no second entry; a seq reused for another request is
// refused by the one entry that carries it. It uses m's scratch buffer.
func (m *Machine) retriedWithSpan(d *decoder, rd digest) bool {
	if d.typ != TypeAcquire || d.span == 0 {
		return false
	}
	span := d.span
	d.span = 0
	spanless := m.digest(d)
	d.span = span
	return rd == spanless
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

// remember stores r as the result of seq, for a command with digest dg, then
// forgets results the client has acknowledged and any beyond
// MaxResultsPerClient, oldest first.
func (s *session) remember(seq, ackedBelow uint64, dg digest, r Result) {
	i, _ := s.find(seq)
	if i == len(s.results) {
		s.results = append(s.results, seqResult{seq, dg, r})
	} else {
		s.results = append(s.results, seqResult{})
		copy(s.results[i+1:], s.results[i:])
		s.results[i] = seqResult{seq, dg, r}
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
