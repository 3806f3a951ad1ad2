package fsm

import (
	"context"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/bufbuild/protocompile"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"
)

// commandProto compiles command.proto, the schema the hand-written codec must
// follow.
func commandProto(t *testing.T) protoreflect.FileDescriptor {
	t.Helper()
	c := protocompile.Compiler{Resolver: &protocompile.SourceResolver{}}
	files, err := c.Compile(context.Background(), "command.proto")
	if err != nil {
		t.Fatalf("compile command.proto: %v", err)
	}
	return files[0]
}

// fields describes a message by field name, as command.proto names them. Values
// are int32, int64, uint64, bool, string, []byte, protoreflect.EnumNumber,
// fields (a message), []fields, []int64 or [][]byte (repeated fields).
type fields map[string]any

// build makes a dynamic message of md from f, failing on a field name the
// schema does not have.
func build(t *testing.T, md protoreflect.MessageDescriptor, f fields) *dynamicpb.Message {
	t.Helper()
	m := dynamicpb.NewMessage(md)
	for name, v := range f {
		fd := md.Fields().ByName(protoreflect.Name(name))
		if fd == nil {
			t.Fatalf("%s has no field %q", md.FullName(), name)
		}
		switch v := v.(type) {
		case fields:
			m.Set(fd, protoreflect.ValueOfMessage(build(t, fd.Message(), v)))
		case []fields:
			l := m.Mutable(fd).List()
			for _, e := range v {
				l.Append(protoreflect.ValueOfMessage(build(t, fd.Message(), e)))
			}
		case []int64:
			l := m.Mutable(fd).List()
			for _, e := range v {
				l.Append(protoreflect.ValueOfInt64(e))
			}
		case [][]byte:
			l := m.Mutable(fd).List()
			for _, e := range v {
				l.Append(protoreflect.ValueOfBytes(e))
			}
		default:
			m.Set(fd, protoreflect.ValueOf(v))
		}
	}
	return m
}

// noUnknown fails the test if m or any message inside it holds fields the
// schema does not know: a field number or wire type the codec got wrong.
func noUnknown(t *testing.T, where string, m protoreflect.Message) {
	t.Helper()
	if u := m.GetUnknown(); len(u) > 0 {
		t.Errorf("%s: %s has unknown fields %x", where, m.Descriptor().FullName(), []byte(u))
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := range v.List().Len() {
				noUnknown(t, where, v.List().Get(i).Message())
			}
		case fd.Message() != nil:
			noUnknown(t, where, v.Message())
		}
		return true
	})
}

// typeNames maps each command type to its message in command.proto.
var typeNames = map[Type]protoreflect.Name{
	TypeSetLimit:    "SetLimit",
	TypeDeleteLimit: "DeleteLimit",
	TypeAcquire:     "Acquire",
	TypeRelease:     "Release",
	TypeBatch:       "Batch",
	TypeCharge:      "Charge",
	TypeExtend:      "Extend",
	TypeRestrict:    "Restrict",

	TypeDeleteLimits: "DeleteLimits",
}

// Every value the codec writes is representable, in full: big, negative and
// extreme values, every field set.
var (
	fullLimit = Limit{Algorithm: SlidingWindow, Limit: 1 << 40, Period: 90 * time.Second, Burst: -7, Slots: -5,
		Strict: true, MaxLease: 3 * time.Second, MaxDebt: -9, Buckets: -3}
	fullLimitProto = fields{"algorithm": protoreflect.EnumNumber(2), "limit": int64(1 << 40), "period_ns": int64(90e9),
		"burst": int64(-7), "slots": int32(-5), "strict": true, "max_lease_ns": int64(3e9), "max_debt": int64(-9),
		"buckets": int32(-3)}

	fullSet      = &SetLimit{Key: "tenant/α/requests", Limit: fullLimit}
	fullSetProto = fields{"key": "tenant/α/requests", "limit": fullLimitProto}

	fullDelete      = &DeleteLimit{Key: "k"}
	fullDeleteProto = fields{"key": "k"}

	fullDeletes      = &DeleteLimits{Prefix: "tenant/α/", StartAfter: "tenant/α/0042", UnpinnedOnly: true}
	fullDeletesProto = fields{"prefix": "tenant/α/", "start_after": "tenant/α/0042", "unpinned_only": true}

	fullAcquire = &Acquire{ClientID: "\x00\xffbinary", Seq: math.MaxUint64, AckedBelow: 1 << 63,
		Items: []Item{
			{Key: "a", Count: 3, Want: 9, Limit: &Limit{Algorithm: TokenBucket, Limit: 5, Period: time.Second, Burst: 8}},
			{Key: "b", Count: -1, Want: math.MinInt64, Limit: &fullLimit},
			{Key: "c", Count: math.MaxInt64},
		},
		TTL: 1500 * time.Millisecond, Paced: true, PacedAfter: -4, Span: 25 * time.Millisecond, SpanBuckets: true}
	fullAcquireProto = fields{"client_id": []byte("\x00\xffbinary"), "seq": uint64(math.MaxUint64), "acked_below": uint64(1 << 63),
		"items": []fields{
			{"key": "a", "count": int64(3), "want": int64(9),
				"limit": fields{"algorithm": protoreflect.EnumNumber(1), "limit": int64(5), "period_ns": int64(1e9), "burst": int64(8)}},
			{"key": "b", "count": int64(-1), "want": int64(math.MinInt64), "limit": fullLimitProto},
			{"key": "c", "count": int64(math.MaxInt64)},
		},
		"ttl_ns": int64(1.5e9), "paced": true, "paced_after_ns": int64(-4), "span_ns": int64(25e6), "span_buckets": true}

	fullRelease = &Release{ClientID: "client-1", Seq: 7, AckedBelow: 6, LeaseID: 1 << 50,
		Unused: []int64{0, 5, -1, 1 << 40}}
	fullReleaseProto = fields{"client_id": []byte("client-1"), "seq": uint64(7), "acked_below": uint64(6),
		"lease_id": uint64(1 << 50), "unused": []int64{0, 5, -1, 1 << 40}}

	fullCharge = &Charge{ClientID: "c", Seq: 1 << 40, AckedBelow: 3, Items: []ChargeItem{
		{Key: "a", Tokens: 1200, Limit: &Limit{Algorithm: TokenBucket, Limit: 5, Period: time.Second, MaxDebt: 50}},
		{Key: "b", Tokens: -3, Limit: &fullLimit},
		{Key: "c", Tokens: math.MaxInt64},
	}}
	fullChargeProto = fields{"client_id": []byte("c"), "seq": uint64(1 << 40), "acked_below": uint64(3),
		"items": []fields{
			{"key": "a", "tokens": int64(1200),
				"limit": fields{"algorithm": protoreflect.EnumNumber(1), "limit": int64(5), "period_ns": int64(1e9), "max_debt": int64(50)}},
			{"key": "b", "tokens": int64(-3), "limit": fullLimitProto},
			{"key": "c", "tokens": int64(math.MaxInt64)},
		}}

	fullExtend      = &Extend{ClientID: "c", Seq: 9, AckedBelow: 8, LeaseID: 1 << 60, TTL: -time.Second}
	fullExtendProto = fields{"client_id": []byte("c"), "seq": uint64(9), "acked_below": uint64(8),
		"lease_id": uint64(1 << 60), "ttl_ns": int64(-1e9)}

	// Remaining 0 is present on the wire (lower to 0), NoRemaining absent.
	fullRestrict = &Restrict{ClientID: "c", Seq: 2, AckedBelow: 1, Items: []RestrictItem{
		{Key: "a", Remaining: 0, BlockFor: 30 * time.Second, Limit: &fullLimit},
		{Key: "b", Remaining: NoRemaining, BlockFor: -1},
		{Key: "c", Remaining: math.MinInt64},
		{Key: "d", Remaining: 17},
	}}
	fullRestrictProto = fields{"client_id": []byte("c"), "seq": uint64(2), "acked_below": uint64(1),
		"items": []fields{
			{"key": "a", "remaining": int64(0), "blocked_for_ns": int64(30e9), "limit": fullLimitProto},
			{"key": "b", "blocked_for_ns": int64(-1)},
			{"key": "c", "remaining": int64(math.MinInt64)},
			{"key": "d", "remaining": int64(17)},
		}}
)

// TestWireMatchesProto checks the hand-written codec against command.proto, in
// both directions: what Encode writes parses with the schema into exactly the
// fields it means, and what a protobuf library writes from the schema decodes
// into the same command.
func TestWireMatchesProto(t *testing.T) {
	fd := commandProto(t)

	t.Run("enums", func(t *testing.T) {
		checkEnum := func(name protoreflect.Name, want map[protoreflect.Name]int) {
			ed := fd.Enums().ByName(name)
			if ed == nil {
				t.Fatalf("no enum %s", name)
			}
			got := make(map[protoreflect.Name]int)
			for i := range ed.Values().Len() {
				v := ed.Values().Get(i)
				if v.Number() != 0 {
					got[v.Name()] = int(v.Number())
				}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("enum %s (-Go +proto):\n%s", name, diff)
			}
		}
		checkEnum("CommandType", map[protoreflect.Name]int{"SET_LIMIT": int(TypeSetLimit), "DELETE_LIMIT": int(TypeDeleteLimit),
			"ACQUIRE": int(TypeAcquire), "RELEASE": int(TypeRelease), "BATCH": int(TypeBatch),
			"CHARGE": int(TypeCharge), "EXTEND": int(TypeExtend), "RESTRICT": int(TypeRestrict),
			"DELETE_LIMITS": int(TypeDeleteLimits)})
		checkEnum("Algorithm", map[protoreflect.Name]int{"TOKEN_BUCKET": int(TokenBucket),
			"SLIDING_WINDOW": int(SlidingWindow), "CONCURRENCY": int(Concurrency)})
		for typ, name := range typeNames {
			if fd.Messages().ByName(name) == nil {
				t.Errorf("type %d: no message %s", typ, name)
			}
		}
	})

	const now = int64(1<<62 + 5)
	tests := []struct {
		name string
		cmd  Command
		want fields // without time_ns
	}{
		{"SetLimit", fullSet, fullSetProto},
		{"DeleteLimit", fullDelete, fullDeleteProto},
		{"Acquire", fullAcquire, fullAcquireProto},
		{"Acquire with one bare item", &Acquire{Items: []Item{{Key: "x", Count: 1}}},
			fields{"items": []fields{{"key": "x", "count": int64(1)}}}},
		{"Release", fullRelease, fullReleaseProto},
		{"Release without unused", &Release{LeaseID: 3}, fields{"lease_id": uint64(3)}},
		{"zero SetLimit limit", &SetLimit{Key: "z"}, fields{"key": "z", "limit": fields{}}},
		{"Charge", fullCharge, fullChargeProto},
		{"Extend", fullExtend, fullExtendProto},
		{"Extend of nothing", &Extend{}, fields{}},
		{"Restrict", fullRestrict, fullRestrictProto},
		{"DeleteLimits", fullDeletes, fullDeletesProto},
		{"DeleteLimits of every unpinned key", &DeleteLimits{UnpinnedOnly: true}, fields{"unpinned_only": true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			typ := tt.cmd.commandType()
			md := fd.Messages().ByName(typeNames[typ])
			want := build(t, md, tt.want)
			want.Set(md.Fields().ByName("time_ns"), protoreflect.ValueOfInt64(now))

			// Encode, then parse with the schema.
			entry := Encode(nil, now, tt.cmd)
			if Type(entry[0]) != typ {
				t.Fatalf("type byte %d, want %d", entry[0], typ)
			}
			got := dynamicpb.NewMessage(md)
			if err := (proto.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(entry[1:], got); err != nil {
				t.Fatalf("proto.Unmarshal of Encode's output: %v", err)
			}
			noUnknown(t, "Encode", got)
			if !proto.Equal(got, want) {
				t.Errorf("Encode wrote\n  %v\nwant\n  %v", got, want)
			}

			// Marshal with the schema, then Decode.
			body, err := proto.Marshal(want)
			if err != nil {
				t.Fatal(err)
			}
			gotNow, c, err := Decode(append([]byte{byte(typ)}, body...))
			if err != nil {
				t.Fatalf("Decode of proto.Marshal's output: %v", err)
			}
			if gotNow != now {
				t.Errorf("Decode: time %d, want %d", gotNow, now)
			}
			if diff := cmp.Diff(tt.cmd, c); diff != "" {
				t.Errorf("Decode (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("Batch", func(t *testing.T) {
		subs := []Command{fullSet, fullDelete, fullAcquire, fullRelease, fullCharge, fullExtend, fullRestrict, fullDeletes}
		subProtos := []fields{fullSetProto, fullDeleteProto, fullAcquireProto, fullReleaseProto,
			fullChargeProto, fullExtendProto, fullRestrictProto, fullDeletesProto}
		md := fd.Messages().ByName("Batch")
		entry := Encode(nil, now, &Batch{Commands: subs})
		got := dynamicpb.NewMessage(md)
		if err := (proto.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(entry[1:], got); err != nil {
			t.Fatalf("proto.Unmarshal of Encode's output: %v", err)
		}
		noUnknown(t, "Encode", got)
		if v := got.Get(md.Fields().ByName("time_ns")).Int(); v != now {
			t.Errorf("time_ns %d, want %d", v, now)
		}
		list := got.Get(md.Fields().ByName("commands")).List()
		if list.Len() != len(subs) {
			t.Fatalf("%d commands, want %d", list.Len(), len(subs))
		}
		var raw [][]byte
		for i := range list.Len() {
			b := list.Get(i).Bytes()
			typ := subs[i].commandType()
			if len(b) == 0 || Type(b[0]) != typ {
				t.Fatalf("command %d: %x, want type byte %d first", i, b, typ)
			}
			smd := fd.Messages().ByName(typeNames[typ])
			sub := dynamicpb.NewMessage(smd)
			if err := (proto.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(b[1:], sub); err != nil {
				t.Fatalf("command %d: %v", i, err)
			}
			noUnknown(t, fmt.Sprintf("Encode, command %d", i), sub)
			// No stamp inside a batch.
			if want := build(t, smd, subProtos[i]); !proto.Equal(sub, want) {
				t.Errorf("command %d: Encode wrote\n  %v\nwant\n  %v", i, sub, want)
			}
			// The other way, with a stamp inside, which Decode ignores.
			want := build(t, smd, subProtos[i])
			want.Set(smd.Fields().ByName("time_ns"), protoreflect.ValueOfInt64(12345))
			body, err := proto.Marshal(want)
			if err != nil {
				t.Fatal(err)
			}
			raw = append(raw, append([]byte{byte(typ)}, body...))
		}
		body, err := proto.Marshal(build(t, md, fields{"time_ns": now, "commands": raw}))
		if err != nil {
			t.Fatal(err)
		}
		gotNow, c, err := Decode(append([]byte{byte(TypeBatch)}, body...))
		if err != nil {
			t.Fatalf("Decode of proto.Marshal's batch: %v", err)
		}
		if gotNow != now {
			t.Errorf("Decode: time %d, want %d", gotNow, now)
		}
		if diff := cmp.Diff(&Batch{Commands: subs}, c); diff != "" {
			t.Errorf("Decode (-want +got):\n%s", diff)
		}
	})

	// Protobuf parsers accept a packed repeated field written unpacked;
	// so does Decode.
	t.Run("unpacked unused", func(t *testing.T) {
		b := []byte{byte(TypeRelease)}
		b = protowire.AppendTag(b, 5, protowire.VarintType)
		b = protowire.AppendVarint(b, 9)
		for _, u := range []int64{4, -1, 0} {
			b = protowire.AppendTag(b, 6, protowire.VarintType)
			b = protowire.AppendVarint(b, uint64(u))
		}
		_, c, err := Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(&Release{LeaseID: 9, Unused: []int64{4, -1, 0}}, c); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})
}

// applyPanics reports what Apply panicked with, or nil.
func applyPanics(m *Machine, entry []byte) (p any) {
	defer func() { p = recover() }()
	m.Apply(entry)
	return nil
}

func TestDecodeRejects(t *testing.T) {
	tests := []struct {
		name  string
		entry []byte
	}{
		{"empty entry", []byte{}},
		{"command type 0", []byte{0, 0x08, 0x01}},
		{"command type 10", []byte{10, 0x08, 0x01}},
		{"command type 255", []byte{255}},
		{"unknown field", []byte{byte(TypeAcquire), 0x58, 0x01}},                     // field 11, varint
		{"unknown field of another command", []byte{byte(TypeSetLimit), 0x28, 0x01}}, // Acquire's seq
		{"unknown field in an item", []byte{byte(TypeAcquire), 0x2a, 0x02, 0x50, 0x01}},
		{"unknown field in a limit", []byte{byte(TypeSetLimit), 0x1a, 0x02, 0x50, 0x01}},
		{"unknown field in a charge item", []byte{byte(TypeCharge), 0x2a, 0x02, 0x20, 0x01}},
		{"unknown field in a restrict item", []byte{byte(TypeRestrict), 0x2a, 0x02, 0x28, 0x01}},
		{"unknown field in an extend", []byte{byte(TypeExtend), 0x38, 0x01}},
		{"a release's field in a charge", []byte{byte(TypeCharge), 0x30, 0x01}},
		{"an acquire's ttl in a restrict", []byte{byte(TypeRestrict), 0x30, 0x01}},
		{"limit field not a varint", []byte{byte(TypeSetLimit), 0x1a, 0x03, 0x0a, 0x01, 'x'}},
		{"algorithm above 255", []byte{byte(TypeSetLimit), 0x1a, 0x03, 0x08, 0x80, 0x02}},
		{"wrong wire type", []byte{byte(TypeAcquire), 0x09, 1, 2, 3, 4, 5, 6, 7, 8}}, // time as fixed64
		{"key as a varint", []byte{byte(TypeDeleteLimit), 0x10, 0x01}},
		{"prefix as a varint", []byte{byte(TypeDeleteLimits), 0x10, 0x01}},
		{"unknown field in a bulk delete", []byte{byte(TypeDeleteLimits), 0x28, 0x01}},
		{"a delete's key field in a bulk delete, as a varint", []byte{byte(TypeDeleteLimits), 0x18, 0x01}},
		{"group wire type", []byte{byte(TypeAcquire), 0x0b}},
		{"field number 0", []byte{byte(TypeAcquire), 0x00, 0x01}},
		{"truncated tag", []byte{byte(TypeAcquire), 0x80}},
		{"truncated varint", []byte{byte(TypeAcquire), 0x08, 0x80}},
		{"truncated varint at the end", []byte{byte(TypeAcquire), 0x18, 0xff, 0xff}},
		{"varint too long", []byte{byte(TypeAcquire), 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}},
		{"truncated length-delimited", []byte{byte(TypeAcquire), 0x12, 0x05, 'a'}},
		{"truncated unused", []byte{byte(TypeRelease), 0x32, 0x01, 0x80}},
		{"batch inside a batch", Encode(nil, 1, &Batch{Commands: []Command{&Batch{}}})},
		{"empty command in a batch", []byte{byte(TypeBatch), 0x12, 0x00}},
		{"bad command in a batch", []byte{byte(TypeBatch), 0x12, 0x03, byte(TypeAcquire), 0x58, 0x01}},
		{"bad command after a good one", append(Encode(nil, 1, &Batch{Commands: []Command{&DeleteLimit{Key: "k"}}}),
			0x12, 0x01, 10)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, c, err := Decode(tt.entry)
			if err == nil {
				t.Fatalf("Decode(%x) = %#v, want an error", tt.entry, c)
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("Decode(%x): %v, want an error wrapping ErrCorrupt", tt.entry, err)
			}
			if p := applyPanics(New(), tt.entry); p == nil {
				t.Errorf("Apply(%x) did not panic", tt.entry)
			}
		})
	}
}
