package fsm

import (
	"bytes"
	"fmt"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// decoder parses one log entry into reusable fields that point into the entry,
// so Apply decodes without allocating. Fields this version does not know are an
// error, not skipped: a replica that cannot honour a command must stop loudly
// rather than apply it differently from its peers.
type decoder struct {
	typ  Type
	now  int64
	key  []byte
	lim  Limit
	hasL bool

	clientID   []byte
	seq        uint64
	ackedBelow uint64
	items      []rawItem
	ttl        int64
	paced      bool
	after      int64
	span       int64
	spanB      bool

	leaseID uint64
	unused  []int64

	batch [][]byte

	// A DeleteLimits: its prefix is key.
	startAfter []byte
	unpinned   bool

	// With memo set (Apply's decoders), the last item limit decoded and its
	// bytes: clients send the same inline limit over and over. They outlive
	// decode's reset.
	memo    bool
	memoRaw []byte
	memoLim Limit
}

// rawItem is an item of an Acquire (key, count, want, limit), a Charge (key,
// count: the tokens, limit) or a Restrict (key, remaining, block, limit).
type rawItem struct {
	key       []byte
	count     int64
	want      int64
	remaining int64 // NoRemaining unless given
	block     int64
	lim       Limit
	hasLimit  bool
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// decode parses entry. Inside a batch, sub-commands may not be batches.
func (d *decoder) decode(entry []byte, inBatch bool) error {
	*d = decoder{items: d.items[:0], unused: d.unused[:0], batch: d.batch[:0],
		memo: d.memo, memoRaw: d.memoRaw, memoLim: d.memoLim}
	if len(entry) == 0 {
		return corrupt("empty entry")
	}
	d.typ = Type(entry[0])
	body := entry[1:]
	switch d.typ {
	case TypeSetLimit, TypeDeleteLimit, TypeDeleteLimits, TypeAcquire, TypeRelease, TypeCharge, TypeExtend, TypeRestrict:
	case TypeBatch:
		if inBatch {
			return corrupt("batch inside a batch")
		}
	default:
		return corrupt("unknown command type %d", entry[0])
	}
	return walk(body, func(num protowire.Number, typ protowire.Type, v uint64, b []byte) error {
		if num == fTime && typ == protowire.VarintType {
			d.now = int64(v)
			return nil
		}
		switch d.typ {
		case TypeSetLimit:
			switch {
			case num == fSetKey && typ == protowire.BytesType:
				d.key = b
				return nil
			case num == fSetLimit && typ == protowire.BytesType:
				d.hasL = true
				return decodeLimit(b, &d.lim)
			}
		case TypeDeleteLimit:
			if num == fDeleteKey && typ == protowire.BytesType {
				d.key = b
				return nil
			}
		case TypeDeleteLimits:
			switch {
			case num == fDeletePrefix && typ == protowire.BytesType:
				d.key = b
				return nil
			case num == fDeleteAfter && typ == protowire.BytesType:
				d.startAfter = b
				return nil
			case num == fDeleteUnpinned && typ == protowire.VarintType:
				d.unpinned = v != 0
				return nil
			}
		case TypeAcquire, TypeRelease, TypeCharge, TypeExtend, TypeRestrict:
			switch {
			case num == fClientID && typ == protowire.BytesType:
				d.clientID = b
				return nil
			case num == fSeq && typ == protowire.VarintType:
				d.seq = v
				return nil
			case num == fAckedBelow && typ == protowire.VarintType:
				d.ackedBelow = v
				return nil
			case d.typ == TypeAcquire && num == fAcquireItems && typ == protowire.BytesType:
				d.items = append(d.items, rawItem{})
				return d.decodeItem(b, &d.items[len(d.items)-1])
			case d.typ == TypeAcquire && num == fAcquireTTL && typ == protowire.VarintType:
				d.ttl = int64(v)
				return nil
			case d.typ == TypeAcquire && num == fAcquirePaced && typ == protowire.VarintType:
				d.paced = v != 0
				return nil
			case d.typ == TypeAcquire && num == fAcquireAfter && typ == protowire.VarintType:
				d.after = int64(v)
				return nil
			case d.typ == TypeAcquire && num == fAcquireSpan && typ == protowire.VarintType:
				d.span = int64(v)
				return nil
			case d.typ == TypeAcquire && num == fAcquireSpanB && typ == protowire.VarintType:
				d.spanB = v != 0
				return nil
			case d.typ == TypeRelease && num == fReleaseLease && typ == protowire.VarintType:
				d.leaseID = v
				return nil
			case d.typ == TypeRelease && num == fReleaseUnused && typ == protowire.BytesType:
				for len(b) > 0 {
					u, n := protowire.ConsumeVarint(b)
					if n < 0 {
						return corrupt("unused: %v", protowire.ParseError(n))
					}
					d.unused = append(d.unused, int64(u))
					b = b[n:]
				}
				return nil
			case d.typ == TypeRelease && num == fReleaseUnused && typ == protowire.VarintType:
				d.unused = append(d.unused, int64(v)) // unpacked form, legal protobuf
				return nil
			case d.typ == TypeCharge && num == fChargeItems && typ == protowire.BytesType:
				d.items = append(d.items, rawItem{})
				return d.decodeChargeItem(b, &d.items[len(d.items)-1])
			case d.typ == TypeExtend && num == fExtendLease && typ == protowire.VarintType:
				d.leaseID = v
				return nil
			case d.typ == TypeExtend && num == fExtendTTL && typ == protowire.VarintType:
				d.ttl = int64(v)
				return nil
			case d.typ == TypeRestrict && num == fRestrictItems && typ == protowire.BytesType:
				d.items = append(d.items, rawItem{remaining: NoRemaining})
				return d.decodeRestrictItem(b, &d.items[len(d.items)-1])
			}
		case TypeBatch:
			if num == fBatchCommands && typ == protowire.BytesType {
				d.batch = append(d.batch, b)
				return nil
			}
		}
		return corrupt("command type %d: unexpected field %d (wire type %d)", d.typ, num, typ)
	})
}

func (d *decoder) decodeItem(b []byte, it *rawItem) error {
	return walk(b, func(num protowire.Number, typ protowire.Type, v uint64, b []byte) error {
		switch {
		case num == fItemKey && typ == protowire.BytesType:
			it.key = b
		case num == fItemCount && typ == protowire.VarintType:
			it.count = int64(v)
		case num == fItemWant && typ == protowire.VarintType:
			it.want = int64(v)
		case num == fItemLimit && typ == protowire.BytesType:
			it.hasLimit = true
			return d.decodeItemLimit(b, &it.lim)
		default:
			return corrupt("acquire item: unexpected field %d", num)
		}
		return nil
	})
}

func (d *decoder) decodeChargeItem(b []byte, it *rawItem) error {
	return walk(b, func(num protowire.Number, typ protowire.Type, v uint64, b []byte) error {
		switch {
		case num == fChargeItemKey && typ == protowire.BytesType:
			it.key = b
		case num == fChargeItemToks && typ == protowire.VarintType:
			it.count = int64(v)
		case num == fChargeItemLim && typ == protowire.BytesType:
			it.hasLimit = true
			return d.decodeItemLimit(b, &it.lim)
		default:
			return corrupt("charge item: unexpected field %d", num)
		}
		return nil
	})
}

func (d *decoder) decodeRestrictItem(b []byte, it *rawItem) error {
	return walk(b, func(num protowire.Number, typ protowire.Type, v uint64, b []byte) error {
		switch {
		case num == fRestrictItemKey && typ == protowire.BytesType:
			it.key = b
		case num == fRestrictItemRemain && typ == protowire.VarintType:
			it.remaining = int64(v)
		case num == fRestrictItemBlock && typ == protowire.VarintType:
			it.block = int64(v)
		case num == fRestrictItemLim && typ == protowire.BytesType:
			it.hasLimit = true
			return d.decodeItemLimit(b, &it.lim)
		default:
			return corrupt("restrict item: unexpected field %d", num)
		}
		return nil
	})
}

// decodeItemLimit is decodeLimit, remembering the last limit decoded without
// error if d.memo is set. decodeLimit is a pure function of the bytes, so the
// memo changes no result. Empty bytes are always decoded, so the zero memo
// never answers.
func (d *decoder) decodeItemLimit(b []byte, l *Limit) error {
	if !d.memo {
		return decodeLimit(b, l)
	}
	if len(b) > 0 && bytes.Equal(b, d.memoRaw) {
		*l = d.memoLim
		return nil
	}
	if err := decodeLimit(b, l); err != nil {
		return err
	}
	d.memoRaw, d.memoLim = append(d.memoRaw[:0], b...), *l
	return nil
}

func decodeLimit(b []byte, l *Limit) error {
	*l = Limit{}
	return walk(b, func(num protowire.Number, typ protowire.Type, v uint64, _ []byte) error {
		if typ != protowire.VarintType {
			return corrupt("limit: field %d is not a varint", num)
		}
		switch num {
		case fLimitAlgorithm:
			if v > 255 {
				return corrupt("limit: algorithm %d", v)
			}
			l.Algorithm = Algorithm(v)
		case fLimitLimit:
			l.Limit = int64(v)
		case fLimitPeriod:
			l.Period = time.Duration(v)
		case fLimitBurst:
			l.Burst = int64(v)
		case fLimitSlots:
			l.Slots = int32(int64(v))
		case fLimitStrict:
			l.Strict = v != 0
		case fLimitMaxLease:
			l.MaxLease = time.Duration(v)
		case fLimitMaxDebt:
			l.MaxDebt = int64(v)
		case fLimitBuckets:
			l.Buckets = int32(int64(v))
		default:
			return corrupt("limit: unexpected field %d", num)
		}
		return nil
	})
}

// walk calls fn for each field of a protobuf message body: v for varints, b for
// length-delimited fields. Other wire types are corrupt here.
func walk(b []byte, fn func(num protowire.Number, typ protowire.Type, v uint64, b []byte) error) error {
	for len(b) > 0 {
		// One-byte tags, varints and lengths are the common case: they take a
		// fast path that returns what the protowire functions would.
		var num protowire.Number
		var typ protowire.Type
		var n int
		if t := b[0]; t < 0x80 && t >= 1<<3 {
			num, typ, n = protowire.Number(t>>3), protowire.Type(t&7), 1
		} else if num, typ, n = protowire.ConsumeTag(b); n < 0 {
			return corrupt("tag: %v", protowire.ParseError(n))
		}
		b = b[n:]
		var v uint64
		var field []byte
		switch typ {
		case protowire.VarintType:
			if len(b) > 0 && b[0] < 0x80 {
				v, n = uint64(b[0]), 1
			} else {
				v, n = protowire.ConsumeVarint(b)
			}
		case protowire.BytesType:
			if len(b) > 0 && b[0] < 0x80 && int(b[0]) < len(b) {
				field, n = b[1:1+int(b[0])], 1+int(b[0])
			} else {
				field, n = protowire.ConsumeBytes(b)
			}
		default:
			return corrupt("field %d: wire type %d", num, typ)
		}
		if n < 0 {
			return corrupt("field %d: %v", num, protowire.ParseError(n))
		}
		b = b[n:]
		if err := fn(num, typ, v, field); err != nil {
			return err
		}
	}
	return nil
}

// command builds an allocated Command from the decoded fields.
func (d *decoder) command() (Command, error) {
	switch d.typ {
	case TypeSetLimit:
		return &SetLimit{Key: string(d.key), Limit: d.lim}, nil
	case TypeDeleteLimit:
		return &DeleteLimit{Key: string(d.key)}, nil
	case TypeDeleteLimits:
		return &DeleteLimits{Prefix: string(d.key), StartAfter: string(d.startAfter), UnpinnedOnly: d.unpinned}, nil
	case TypeAcquire:
		a := &Acquire{ClientID: string(d.clientID), Seq: d.seq, AckedBelow: d.ackedBelow, TTL: time.Duration(d.ttl), Paced: d.paced, PacedAfter: d.after, Span: time.Duration(d.span), SpanBuckets: d.spanB}
		for _, it := range d.items {
			item := Item{Key: string(it.key), Count: it.count, Want: it.want}
			if it.hasLimit {
				l := it.lim
				item.Limit = &l
			}
			a.Items = append(a.Items, item)
		}
		return a, nil
	case TypeRelease:
		r := &Release{ClientID: string(d.clientID), Seq: d.seq, AckedBelow: d.ackedBelow, LeaseID: d.leaseID}
		if len(d.unused) > 0 {
			r.Unused = append([]int64(nil), d.unused...)
		}
		return r, nil
	case TypeCharge:
		c := &Charge{ClientID: string(d.clientID), Seq: d.seq, AckedBelow: d.ackedBelow}
		for _, it := range d.items {
			c.Items = append(c.Items, ChargeItem{Key: string(it.key), Tokens: it.count, Limit: it.limit()})
		}
		return c, nil
	case TypeExtend:
		return &Extend{ClientID: string(d.clientID), Seq: d.seq, AckedBelow: d.ackedBelow, LeaseID: d.leaseID,
			TTL: time.Duration(d.ttl)}, nil
	case TypeRestrict:
		r := &Restrict{ClientID: string(d.clientID), Seq: d.seq, AckedBelow: d.ackedBelow}
		for _, it := range d.items {
			r.Items = append(r.Items, RestrictItem{Key: string(it.key), Remaining: it.remaining,
				BlockFor: time.Duration(it.block), Limit: it.limit()})
		}
		return r, nil
	case TypeBatch:
		b := &Batch{}
		var sub decoder
		for _, e := range d.batch {
			if err := sub.decode(e, true); err != nil {
				return nil, err
			}
			c, err := sub.command()
			if err != nil {
				return nil, err
			}
			b.Commands = append(b.Commands, c)
		}
		return b, nil
	}
	return nil, corrupt("unknown command type %d", d.typ)
}

// limit returns a copy of the item's inline limit, or nil if it has none.
func (it *rawItem) limit() *Limit {
	if !it.hasLimit {
		return nil
	}
	l := it.lim
	return &l
}
