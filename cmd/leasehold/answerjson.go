package main

import (
	"bytes"
	"encoding/json"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// answerJSON is an answer as `status --json` and `members --json` print
// it: protojson's object (the proto's field names, every field, enums by
// name), but with 64-bit integers as JSON numbers, not protojson's
// strings. protojson quotes them for JavaScript, whose numbers are
// doubles; a script is worse served by strings: jq's `.keys > 1000` is
// true for any string, and `.keys / .max_keys` an error. The digits are
// protojson's own, so a parser with exact integers (Python; Go into
// int64 fields or with UseNumber; jq 1.7 for numbers it does not compute
// with) reads them exactly; one with doubles alone rounds past 2^53 (log
// time after 104 days, a Unix time in nanoseconds), by up to a few hundred
// nanoseconds.
func answerJSON(m proto.Message) (map[string]any, error) {
	b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return nil, err
	}
	unquoteInt64s(m.ProtoReflect().Descriptor(), obj)
	return obj, nil
}

// unquoteInt64s turns, in obj (a message of type md as protojson wrote
// it), each 64-bit integer protojson quoted, in md and the messages it
// holds, into a JSON number.
func unquoteInt64s(md protoreflect.MessageDescriptor, obj map[string]any) {
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		name := string(fd.Name())
		if fd.IsMap() {
			if m, ok := obj[name].(map[string]any); ok {
				unquoteValues(fd.MapValue(), m)
			}
			continue
		}
		switch v := obj[name].(type) {
		case []any:
			for j := range v {
				v[j] = unquoted(fd, v[j])
			}
		default:
			obj[name] = unquoted(fd, v)
		}
	}
}

// unquoteValues unquotes the values of a map field whose values are fd.
func unquoteValues(fd protoreflect.FieldDescriptor, m map[string]any) {
	for k, v := range m {
		m[k] = unquoted(fd, v)
	}
}

// unquoted returns v, one value of field fd as protojson wrote it, with
// its 64-bit integers as JSON numbers.
func unquoted(fd protoreflect.FieldDescriptor, v any) any {
	switch v := v.(type) {
	case string:
		switch fd.Kind() {
		case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind,
			protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
			return json.Number(v)
		}
	case map[string]any:
		if fd.Message() != nil {
			unquoteInt64s(fd.Message(), v)
		}
	}
	return v
}
