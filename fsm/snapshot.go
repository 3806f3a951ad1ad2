package fsm

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"maps"
	"slices"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/leasehold/leasehold/limiter"
)

// Snapshot format v4: the magic "LHSN", a version byte, then records, each a
// kind byte, a uvarint length and a protobuf body, and last an end record whose
// body is the CRC-32C (Castagnoli) of every byte before it, big-endian. Records
// come in the order of the machine's own slices, so two machines that applied
// the same commands write the same bytes; Restore rebuilds those slices in the
// same order, so a restored machine goes on exactly as the original would.
//
// v2 adds to each remembered result of a session the digest of the command
// that got it (field 3 of the result's record, the CRC-32C as a varint;
// absent when unknown). v1 is v2 without digests: Restore reads both, and a
// result restored from v1 has no digest, so it answers any command with its
// seq, as before v2.
//
// v3 adds a limit's MaxDebt (field 8 of a limit definition, absent when 0)
// and a key's refund floor from a Restrict (field 7 of a key, absent when it
// has none). A state with neither is the v2 bytes with version 3. (The
// results of Charge, Extend and Restrict are Results like the others; a v2
// reader would restore them, but not the limits and floors they go with.) An Extend may leave a live lease with two entries in
// the expiry heap; the heap is written verbatim, and the lease once, at its
// current entry.
//
// v4 adds what a sliding window's pieced leases need (see Acquire.Paced): a
// window limit's Buckets (field 9 of a limit definition, absent when 0), a
// lease item's pieced flag (field 6 of an item, absent when not pieced) and
// a remembered result's Piece and Pieces (fields 8 and 9 of a result, absent
// when 0). A state with none of them is the v3 bytes with version 4.
//
// Format versions are never changed in place: a new layout is a new version,
// and every testdata/snapshot-v*.golden must decode forever.
const (
	snapshotMagic   = "LHSN"
	snapshotVersion = 4
	// snapshotOldest is the oldest version Restore reads.
	snapshotOldest = 1
)

const (
	recMeta     = 1 // now, next lease id, sweep cursors, counts
	recLimit    = 2 // one limit table slot, by id; a free slot has no def
	recFree     = 3 // the limit table's free list, packed
	recKey      = 4 // one key, in entries order
	recLease    = 5 // one live lease, in expiry-heap order
	recExpiries = 6 // a chunk of the expiry heap, in array order
	recSession  = 7 // one client session, in sweep order
	recEnd      = 0xff
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Snapshot writes the machine's whole state to w. It streams: memory beyond
// one record does not grow with the number of keys.
func (m *Machine) Snapshot(w io.Writer) error {
	s := m.snapState()
	_, err := s.writeTo(w)
	return err
}

// Capture is the state of a Machine at one point of its log, to be written
// later while the machine goes on applying: Machine.Capture takes it, and its
// WriteTo writes the same bytes as Machine.Snapshot would have written at the
// moment of the capture, whatever the machine applied since.
//
// A Capture may be used by one goroutine while another uses its Machine:
// neither writes memory the other reads. A Capture itself is not safe for
// concurrent use.
type Capture struct {
	s snapState
}

// Capture takes a Capture of the machine's state. It copies the flat arrays
// the state lives in (for each key 32 bytes, for each live lease about 30,
// for each session 8; and the sliding-window map's pointers), but no key,
// lease, session or window record: those the machine copies before it next
// changes one, at most once per Capture (copy on write), so the work of a
// Capture is a few memory copies, and encoding is left to WriteTo.
//
// The caller must not use the machine while Capture runs, as with Apply.
func (m *Machine) Capture() *Capture {
	s := m.snapState()
	s.entries = slices.Clone(s.entries)
	s.windows = maps.Clone(s.windows)
	s.floors = maps.Clone(s.floors)
	s.limits = slices.Clone(s.limits)
	s.free = slices.Clone(s.free)
	s.leases.slots = slices.Clone(s.leases.slots)
	s.expiries = slices.Clone(s.expiries)
	s.sessions = slices.Clone(s.sessions)
	// Every record that exists now may be in s: from here on the machine
	// copies one before changing it.
	m.gen++
	return &Capture{s: s}
}

// WriteTo writes the captured state to w in the current snapshot format, streaming
// through a 64 KiB buffer, and returns the bytes written. It may be called
// while the Machine applies, and more than once (each call writes the same
// bytes).
func (c *Capture) WriteTo(w io.Writer) (int64, error) {
	return c.s.writeTo(w)
}

// Release drops the capture's references to the state, so that the memory
// only it kept alive can be freed. WriteTo must not be called after it.
func (c *Capture) Release() {
	c.s = snapState{}
}

// snapState is what a snapshot records: the machine's scalars and the slices
// and maps that hold its records, either the machine's own (Snapshot) or
// copies of them (Capture).
type snapState struct {
	now          int64
	nextLease    uint64
	sweep        int
	sessionSweep int
	entries      []entry
	windows      map[string]*window
	floors       map[string]int64
	limits       []compiled
	free         []uint32
	leases       leaseTable
	expiries     expiryHeap
	sessions     []*session
}

// snapState returns the machine's state, sharing its slices.
func (m *Machine) snapState() snapState {
	return snapState{
		now:          m.now,
		nextLease:    m.nextLease,
		sweep:        m.sweep,
		sessionSweep: m.sessionSweep,
		entries:      m.entries,
		windows:      m.windows,
		floors:       m.floors,
		limits:       m.limits.slots,
		free:         m.limits.free,
		leases:       m.leases,
		expiries:     m.expiries,
		sessions:     m.sessionOrder,
	}
}

func (m *snapState) writeTo(w io.Writer) (int64, error) {
	sw := &snapWriter{bw: bufio.NewWriterSize(w, 64<<10)}
	sw.write([]byte(snapshotMagic))
	sw.write([]byte{snapshotVersion})

	sw.record(recMeta, func(b []byte) []byte {
		b = appendVarint(b, 1, uint64(m.now))
		b = appendVarint(b, 2, m.nextLease)
		b = appendVarint(b, 3, uint64(m.sweep))
		b = appendVarint(b, 4, uint64(m.sessionSweep))
		b = appendVarint(b, 5, uint64(len(m.entries)))
		b = appendVarint(b, 6, uint64(len(m.limits)))
		return appendVarint(b, 7, uint64(len(m.sessions)))
	})
	for id := 1; id < len(m.limits); id++ {
		c := &m.limits[id]
		sw.record(recLimit, func(b []byte) []byte {
			b = appendVarint(b, 1, uint64(id))
			if c.refs > 0 {
				b = appendLimit(b, 2, &c.def)
			}
			return b
		})
	}
	if len(m.free) > 0 {
		sw.record(recFree, func(b []byte) []byte {
			return appendPacked(b, 1, len(m.free), func(i int) uint64 { return uint64(m.free[i]) })
		})
	}
	for i := range m.entries {
		e := &m.entries[i]
		sw.record(recKey, func(b []byte) []byte {
			b = appendString(b, 1, e.key)
			b = appendVarint(b, 2, uint64(e.limit()))
			if e.pinned() {
				b = appendVarint(b, 3, 1)
			}
			b = appendVarint(b, 4, uint64(e.state))
			if ws := m.windows[e.key]; ws != nil {
				b = appendVarint(b, 5, uint64(ws.Base))
				b = appendPacked(b, 6, len(ws.Counts), func(i int) uint64 { return uint64(ws.Counts[i]) })
			}
			if len(m.floors) > 0 { // few keys have one: no lookup for most
				if f, ok := m.floors[e.key]; ok {
					b = protowire.AppendTag(b, 7, protowire.VarintType)
					b = protowire.AppendVarint(b, uint64(f))
				}
			}
			return b
		})
	}
	for _, x := range m.expiries {
		l := m.leases.current(x)
		if l == nil {
			continue
		}
		sw.record(recLease, func(b []byte) []byte {
			b = appendVarint(b, 1, l.id)
			b = appendString(b, 2, l.client)
			b = appendVarint(b, 3, uint64(l.expires))
			for i := range l.items {
				it := &l.items[i]
				b = protowire.AppendTag(b, 4, protowire.BytesType)
				b = appendMessage(b, func(b []byte) []byte {
					b = appendString(b, 1, it.key)
					b = appendVarint(b, 2, uint64(it.limit))
					b = appendVarint(b, 3, uint64(it.granted))
					b = appendVarint(b, 4, uint64(it.span.First))
					b = appendVarint(b, 5, uint64(it.span.Last))
					if it.span.Pieced {
						b = appendVarint(b, 6, 1)
					}
					return b
				})
			}
			return b
		})
	}
	const chunk = 4096
	for lo := 0; lo < len(m.expiries); lo += chunk {
		part := m.expiries[lo:min(lo+chunk, len(m.expiries))]
		sw.record(recExpiries, func(b []byte) []byte {
			return appendPacked(b, 1, 2*len(part), func(i int) uint64 {
				if i%2 == 0 {
					return uint64(part[i/2].at)
				}
				return part[i/2].id
			})
		})
	}
	for _, s := range m.sessions {
		sw.record(recSession, func(b []byte) []byte {
			b = appendString(b, 1, s.client)
			b = appendVarint(b, 2, uint64(s.lastSeen))
			b = appendVarint(b, 3, s.floor)
			for i := range s.results {
				r := &s.results[i]
				b = protowire.AppendTag(b, 4, protowire.BytesType)
				b = appendMessage(b, func(b []byte) []byte {
					b = appendVarint(b, 1, r.seq)
					b = appendResult(b, 2, &r.res)
					if r.digest != 0 {
						b = appendVarint(b, 3, uint64(uint32(r.digest)))
					}
					return b
				})
			}
			return b
		})
	}
	sum := sw.crc
	sw.write([]byte{recEnd, 4})
	sw.write(binary.BigEndian.AppendUint32(nil, sum))
	if sw.err != nil {
		return sw.n, fmt.Errorf("write snapshot: %w", sw.err)
	}
	if err := sw.bw.Flush(); err != nil {
		return sw.n - int64(sw.bw.Buffered()), fmt.Errorf("write snapshot: %w", err)
	}
	return sw.n, nil
}

func appendResult(b []byte, field protowire.Number, r *Result) []byte {
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return appendMessage(b, func(b []byte) []byte {
		b = appendVarint(b, 1, uint64(r.Status))
		b = appendString(b, 2, r.Message)
		b = appendVarint(b, 3, uint64(r.Time))
		b = appendVarint(b, 4, r.LeaseID)
		b = appendVarint(b, 5, uint64(r.TTL))
		b = appendVarint(b, 6, uint64(r.RetryAfter))
		if r.Items != nil {
			b = appendPacked(b, 7, 2*len(r.Items), func(i int) uint64 {
				if i%2 == 0 {
					return uint64(r.Items[i/2].Granted)
				}
				return uint64(r.Items[i/2].Remaining)
			})
		}
		b = appendVarint(b, 8, uint64(r.Piece))
		return appendVarint(b, 9, uint64(r.Pieces))
	})
}

// appendPacked appends n varints as one packed field, even when n is 0 so that
// an empty list stays distinguishable from an absent one.
func appendPacked(b []byte, field protowire.Number, n int, at func(int) uint64) []byte {
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return appendMessage(b, func(b []byte) []byte {
		for i := range n {
			b = protowire.AppendVarint(b, at(i))
		}
		return b
	})
}

// snapWriter writes records through a buffer, keeping a running CRC and the
// first error.
type snapWriter struct {
	bw  *bufio.Writer
	crc uint32
	n   int64 // bytes taken by bw
	buf []byte
	err error
}

func (w *snapWriter) write(p []byte) {
	if w.err != nil {
		return
	}
	w.crc = crc32.Update(w.crc, castagnoli, p)
	var n int
	n, w.err = w.bw.Write(p)
	w.n += int64(n)
}

func (w *snapWriter) record(kind byte, body func([]byte) []byte) {
	w.buf = append(w.buf[:0], kind)
	w.buf = appendMessage(w.buf, body)
	w.write(w.buf)
}

// Restore replaces the machine's state with the snapshot read from r. On error
// the machine is unchanged. Like Snapshot it streams, holding one record at a
// time beyond the state being built.
func (m *Machine) Restore(r io.Reader) error {
	n, err := restore(bufio.NewReaderSize(r, 64<<10))
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	*m = *n
	return nil
}

type snapReader struct {
	br  *bufio.Reader
	crc uint32
	buf []byte
}

func (r *snapReader) readFull(p []byte) error {
	if _, err := io.ReadFull(r.br, p); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	r.crc = crc32.Update(r.crc, castagnoli, p)
	return nil
}

// next reads one record; the CRC before it is returned for the end record.
func (r *snapReader) next() (kind byte, body []byte, crcBefore uint32, err error) {
	crcBefore = r.crc
	var k [1]byte
	if err := r.readFull(k[:]); err != nil {
		return 0, nil, 0, err
	}
	var lenBuf [binary.MaxVarintLen64]byte
	var size uint64
	for i := 0; ; i++ {
		if i == len(lenBuf) {
			return 0, nil, 0, corrupt("record length too long")
		}
		if err := r.readFull(lenBuf[i : i+1]); err != nil {
			return 0, nil, 0, err
		}
		if lenBuf[i] < 0x80 {
			v, n := protowire.ConsumeVarint(lenBuf[:i+1])
			if n < 0 {
				return 0, nil, 0, corrupt("record length: %v", protowire.ParseError(n))
			}
			size = v
			break
		}
	}
	if size > 64<<20 {
		return 0, nil, 0, corrupt("record of %d bytes", size)
	}
	if uint64(cap(r.buf)) < size {
		r.buf = make([]byte, size)
	}
	r.buf = r.buf[:size]
	if err := r.readFull(r.buf); err != nil {
		return 0, nil, 0, err
	}
	return k[0], r.buf, crcBefore, nil
}

func restore(br *bufio.Reader) (*Machine, error) {
	r := &snapReader{br: br}
	var head [len(snapshotMagic) + 1]byte
	if err := r.readFull(head[:]); err != nil {
		return nil, fmt.Errorf("header: %w", err)
	}
	if string(head[:len(snapshotMagic)]) != snapshotMagic {
		return nil, corrupt("not a Leasehold snapshot")
	}
	version := head[len(snapshotMagic)]
	if version < snapshotOldest || version > snapshotVersion {
		return nil, corrupt("snapshot format version %d; this build reads %d to %d", version, snapshotOldest, snapshotVersion)
	}
	m := New()
	m.limits.slots = m.limits.slots[:1]
	var seenMeta bool
	for {
		kind, body, crcBefore, err := r.next()
		if err != nil {
			return nil, err
		}
		if kind == recEnd {
			if len(body) != 4 || binary.BigEndian.Uint32(body) != crcBefore {
				return nil, corrupt("checksum mismatch")
			}
			if !seenMeta {
				return nil, corrupt("no meta record")
			}
			return m, m.finishRestore()
		}
		if kind != recMeta && !seenMeta {
			return nil, corrupt("record %d before the meta record", kind)
		}
		switch kind {
		case recMeta:
			err = m.restoreMeta(body)
			seenMeta = true
		case recLimit:
			err = m.restoreLimit(body)
		case recFree:
			err = walk(body, func(num protowire.Number, typ protowire.Type, _ uint64, b []byte) error {
				return unpack(b, func(v uint64) { m.limits.free = append(m.limits.free, uint32(v)) })
			})
		case recKey:
			err = m.restoreKey(body)
		case recLease:
			err = m.restoreLease(body)
		case recExpiries:
			err = m.restoreExpiries(body)
		case recSession:
			err = m.restoreSession(body, version)
		default:
			err = corrupt("unknown record kind %d", kind)
		}
		if err != nil {
			return nil, err
		}
	}
}

func unpack(b []byte, fn func(uint64)) error {
	for len(b) > 0 {
		v, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return corrupt("packed field: %v", protowire.ParseError(n))
		}
		fn(v)
		b = b[n:]
	}
	return nil
}

func (m *Machine) restoreMeta(body []byte) error {
	var entries, limits, sessions uint64
	err := walk(body, func(num protowire.Number, _ protowire.Type, v uint64, _ []byte) error {
		switch num {
		case 1:
			m.now = int64(v)
		case 2:
			m.nextLease = v
		case 3:
			m.sweep = int(v)
		case 4:
			m.sessionSweep = int(v)
		case 5:
			entries = v
		case 6:
			limits = v
		case 7:
			sessions = v
		}
		return nil
	})
	const most = 1 << 28 // guards the preallocation against a corrupt count
	m.entries = make([]entry, 0, min(entries, most))
	m.keys = keyIndex{}
	m.keys.reserve(nil, int(min(entries, most)))
	m.limits.slots = make([]compiled, 1, max(min(limits, most), 1))
	m.sessionOrder = make([]*session, 0, min(sessions, most))
	return err
}

func (m *Machine) restoreLimit(body []byte) error {
	var id uint64
	var def Limit
	hasDef := false
	err := walk(body, func(num protowire.Number, _ protowire.Type, v uint64, b []byte) error {
		switch num {
		case 1:
			id = v
		case 2:
			hasDef = true
			return decodeLimit(b, &def)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if id != uint64(len(m.limits.slots)) {
		return corrupt("limit id %d out of order", id)
	}
	c := compiled{}
	if hasDef {
		if c, err = compile(def); err != nil {
			return corrupt("limit %d: %v", id, err)
		}
	}
	m.limits.slots = append(m.limits.slots, c)
	return nil
}

func (m *Machine) restoreKey(body []byte) error {
	var key string
	var limit uint64
	var pinned bool
	var state, floor int64
	var hasFloor bool
	var ws *limiter.WindowState
	err := walk(body, func(num protowire.Number, _ protowire.Type, v uint64, b []byte) error {
		switch num {
		case 1:
			key = string(b)
		case 2:
			limit = v
		case 3:
			pinned = v != 0
		case 4:
			state = int64(v)
		case 5:
			if ws == nil {
				ws = &limiter.WindowState{}
			}
			ws.Base = int64(v)
		case 6:
			if ws == nil {
				ws = &limiter.WindowState{}
			}
			return unpack(b, func(v uint64) { ws.Counts = append(ws.Counts, int64(v)) })
		case 7:
			floor, hasFloor = int64(v), true
		}
		return nil
	})
	if err != nil {
		return err
	}
	if limit == 0 || limit >= uint64(len(m.limits.slots)) || limit > 0x7fffffff {
		return corrupt("key %q: limit id %d", key, limit)
	}
	if key == "" || m.keys.findString(m.entries, key) >= 0 {
		return corrupt("key %q twice or empty", key)
	}
	m.entries = append(m.entries, entry{key: key, state: state, meta: makeMeta(uint32(limit), pinned)})
	m.keys.insert(m.entries)
	if ws != nil {
		m.windows[key] = &window{WindowState: *ws}
	}
	if hasFloor {
		m.floors[key] = floor
	}
	return nil
}

func (m *Machine) restoreLease(body []byte) error {
	l := &lease{}
	err := walk(body, func(num protowire.Number, _ protowire.Type, v uint64, b []byte) error {
		switch num {
		case 1:
			l.id = v
		case 2:
			l.client = string(b)
		case 3:
			l.expires = int64(v)
		case 4:
			var it leaseItem
			if err := walk(b, func(num protowire.Number, _ protowire.Type, v uint64, b []byte) error {
				switch num {
				case 1:
					it.key = string(b)
				case 2:
					it.limit = uint32(v)
				case 3:
					it.granted = int64(v)
				case 4:
					it.span.First = int64(v)
				case 5:
					it.span.Last = int64(v)
				case 6:
					it.span.Pieced = v != 0
				}
				return nil
			}); err != nil {
				return err
			}
			l.items = append(l.items, it)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if m.leases.get(l.id) != nil {
		return corrupt("lease %d twice", l.id)
	}
	m.leases.put(l)
	return nil
}

func (m *Machine) restoreExpiries(body []byte) error {
	var vals []uint64
	err := walk(body, func(_ protowire.Number, _ protowire.Type, _ uint64, b []byte) error {
		return unpack(b, func(v uint64) { vals = append(vals, v) })
	})
	if err != nil {
		return err
	}
	if len(vals)%2 != 0 {
		return corrupt("odd expiry list")
	}
	for i := 0; i < len(vals); i += 2 {
		m.expiries = append(m.expiries, expiry{at: int64(vals[i]), id: vals[i+1]})
	}
	return nil
}

// restoreSession restores one session record of a snapshot of the given
// format version; results of a v1 snapshot have no digest.
func (m *Machine) restoreSession(body []byte, version byte) error {
	s := &session{index: len(m.sessionOrder)}
	err := walk(body, func(num protowire.Number, _ protowire.Type, v uint64, b []byte) error {
		switch num {
		case 1:
			s.client = string(b)
		case 2:
			s.lastSeen = int64(v)
		case 3:
			s.floor = v
		case 4:
			var sr seqResult
			if err := walk(b, func(num protowire.Number, _ protowire.Type, v uint64, b []byte) error {
				switch {
				case num == 1:
					sr.seq = v
				case num == 2:
					return decodeResult(b, &sr.res)
				case num == 3 && version >= 2:
					if v > 0xffffffff {
						return corrupt("result digest %#x", v)
					}
					sr.digest = digest(1<<32 | v)
				}
				return nil
			}); err != nil {
				return err
			}
			s.results = append(s.results, sr)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if _, dup := m.sessions[s.client]; dup || s.client == "" {
		return corrupt("session %q twice or empty", s.client)
	}
	m.sessions[s.client] = s
	m.sessionOrder = append(m.sessionOrder, s)
	return nil
}

func decodeResult(b []byte, r *Result) error {
	return walk(b, func(num protowire.Number, _ protowire.Type, v uint64, b []byte) error {
		switch num {
		case 1:
			r.Status = Status(v)
		case 2:
			r.Message = string(b)
		case 3:
			r.Time = int64(v)
		case 4:
			r.LeaseID = v
		case 5:
			r.TTL = time.Duration(v)
		case 6:
			r.RetryAfter = time.Duration(v)
		case 7:
			var vals []int64
			if err := unpack(b, func(v uint64) { vals = append(vals, int64(v)) }); err != nil {
				return err
			}
			if len(vals)%2 != 0 {
				return corrupt("odd result items")
			}
			r.Items = make([]ItemResult, len(vals)/2)
			for i := range r.Items {
				r.Items[i] = ItemResult{Granted: vals[2*i], Remaining: vals[2*i+1]}
			}
		case 8:
			r.Piece = time.Duration(v)
		case 9:
			r.Pieces = int32(v)
		}
		return nil
	})
}

// finishRestore rebuilds what the snapshot leaves out because it follows from
// the rest: limit references and ids, lessee counts, and checks that every
// reference points at something.
func (m *Machine) finishRestore() error {
	for i := range m.entries {
		e := &m.entries[i]
		c := &m.limits.slots[e.limit()]
		if c.def.Algorithm == 0 {
			return corrupt("key %q uses a free limit", e.key)
		}
		c.refs++
	}
	for id := 1; id < len(m.limits.slots); id++ {
		c := &m.limits.slots[id]
		if c.refs > 0 {
			m.limits.ids[c.def] = uint32(id)
		}
	}
	current := 0
	for _, x := range m.expiries {
		l := m.leases.current(x)
		if l == nil {
			continue
		}
		current++
		for j := range l.items {
			it := &l.items[j]
			it.hold = m.holdOf(lessee{it.key, l.client})
			if *it.hold++; *it.hold > 1 {
				continue // the client is counted already
			}
			if k := m.entryOf(it); k >= 0 {
				m.entries[k].meta += oneLessee
			} else {
				m.orphans[it.key]++
			}
		}
	}
	if current != m.leases.len() {
		return corrupt("%d live leases, %d of them with an expiry", m.leases.len(), current)
	}
	if m.sweep > len(m.entries) || m.sessionSweep > len(m.sessionOrder) {
		return corrupt("sweep cursor out of range")
	}
	return nil
}
