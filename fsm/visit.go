package fsm

import (
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// Visitor receives what [Visit] finds in a log entry: the parts an operator
// counts (which command, which keys, tokens given back). Its methods are
// called in entry order, on the caller's goroutine.
type Visitor interface {
	// Command is called once per command, before its keys. i is the
	// index of the command's Result in what Apply returns for the entry;
	// ttl is an Acquire's lease TTL (0: a central decision), 0 otherwise.
	Command(i int, typ Type, ttl time.Duration)
	// Key is called with the key of a SetLimit or DeleteLimit (item 0; not
	// for an empty one) and with each Acquire item's key, item being its
	// index. key points into the entry: it is valid only during the call.
	Key(i, item int, key []byte)
	// Unused is called for a Release that names unused counts, with their
	// sum (a Release naming none gives back every token of its lease).
	Unused(i int, total int64)
}

// Visit walks a log entry, as Apply would decode it, and tells v about
// each command in it. It reads the entry only: it changes no Machine and
// allocates nothing. An entry Apply could not decode is an error wrapping
// ErrCorrupt, and v may have been told about part of it.
//
// Package cluster uses it to count, outside the replicated state, what every
// node applies (per-key activity for operators); Apply itself is unchanged.
func Visit(entry []byte, v Visitor) error {
	if len(entry) == 0 {
		return corrupt("empty entry")
	}
	if Type(entry[0]) != TypeBatch {
		return visitOne(0, entry, v)
	}
	i := 0
	return walk(entry[1:], func(num protowire.Number, typ protowire.Type, _ uint64, b []byte) error {
		switch {
		case num == fTime && typ == protowire.VarintType:
			return nil
		case num == fBatchCommands && typ == protowire.BytesType:
			if len(b) > 0 && Type(b[0]) == TypeBatch {
				return corrupt("batch inside a batch")
			}
			err := visitOne(i, b, v)
			i++
			return err
		}
		return corrupt("batch: unexpected field %d (wire type %d)", num, typ)
	})
}

// visitOne visits the command in entry, the i-th of its entry.
func visitOne(i int, entry []byte, v Visitor) error {
	if len(entry) == 0 {
		return corrupt("empty command")
	}
	t := Type(entry[0])
	body := entry[1:]
	var ttl int64
	switch t {
	case TypeSetLimit, TypeDeleteLimit, TypeRelease:
	case TypeAcquire:
		// The TTL comes after the items on the wire; find it first, so
		// that Command precedes the keys.
		if err := walk(body, func(num protowire.Number, typ protowire.Type, val uint64, _ []byte) error {
			if num == fAcquireTTL && typ == protowire.VarintType {
				ttl = int64(val)
			}
			return nil
		}); err != nil {
			return err
		}
	default:
		return corrupt("unknown command type %d", entry[0])
	}
	v.Command(i, t, time.Duration(ttl))
	item := 0
	var (
		key       []byte // a SetLimit's or DeleteLimit's: the last on the wire, as Apply reads it
		unused    int64
		hasUnused bool
	)
	err := walk(body, func(num protowire.Number, typ protowire.Type, val uint64, b []byte) error {
		switch {
		case t == TypeRelease && num == fReleaseUnused && typ == protowire.VarintType:
			unused, hasUnused = unused+int64(val), true // the unpacked form, legal protobuf
		case typ != protowire.BytesType:
		case (t == TypeSetLimit && num == fSetKey) || (t == TypeDeleteLimit && num == fDeleteKey):
			key = b
		case t == TypeAcquire && num == fAcquireItems:
			k, err := itemKey(b)
			if err != nil {
				return err
			}
			v.Key(i, item, k)
			item++
		case t == TypeRelease && num == fReleaseUnused:
			hasUnused = true
			for len(b) > 0 {
				u, n := protowire.ConsumeVarint(b)
				if n < 0 {
					return corrupt("unused: %v", protowire.ParseError(n))
				}
				unused += int64(u)
				b = b[n:]
			}
		}
		return nil
	})
	switch {
	case err != nil:
	case len(key) > 0:
		v.Key(i, 0, key)
	case hasUnused:
		v.Unused(i, unused)
	}
	return err
}

// itemKey returns the key of an encoded Acquire item.
func itemKey(b []byte) ([]byte, error) {
	var key []byte
	err := walk(b, func(num protowire.Number, typ protowire.Type, _ uint64, f []byte) error {
		if num == fItemKey && typ == protowire.BytesType {
			key = f
		}
		return nil
	})
	return key, err
}
