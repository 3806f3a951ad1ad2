package transport

import (
	"context"
	"fmt"
	"strconv"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// ServerOptions returns the options a grpc.Server of this API is made with:
// a request above MaxRequestBytes is refused unread (grpc.MaxRecvMsgSize:
// gRPC answers RESOURCE_EXHAUSTED, with no retry hint), and a request that
// does not decode (malformed protobuf, a key that is not UTF-8) is answered
// INVALID_ARGUMENT naming the problem, where gRPC alone answers INTERNAL.
// Its flow-control windows are fixed (StreamWindowBytes, ConnWindowBytes):
// no PINGs of gRPC's window sizing ride along with the calls.
// Pass them to grpc.NewServer beside any others:
//
//	srv := grpc.NewServer(transport.ServerOptions()...)
//	transport.Register(srv, node)
//
// The codec they install (grpc.ForceServerCodecV2) decodes every other
// service's messages exactly as gRPC's proto codec does. A server made
// without them still works, with gRPC's size limit and error codes.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxRequestBytes),
		grpc.ForceServerCodecV2(serverCodec{}),
		grpc.StaticStreamWindowSize(StreamWindowBytes),
		grpc.StaticConnWindowSize(ConnWindowBytes),
	}
}

// frame is what a Leasehold handler asks gRPC to decode a request into: the
// request message itself, and room for the error of decoding it. gRPC turns
// any error of a codec into an INTERNAL status before the handler sees it,
// so serverCodec decodes a frame without failing and leaves the error here,
// for the handler to report as INVALID_ARGUMENT. A frame is a proto.Message
// (the request's), so gRPC's own codec decodes it too, failing as usual.
type frame struct {
	proto.Message
	err error  // from decoding, nil if the request decoded
	raw []byte // the request's bytes, kept only when it did not decode
}

// serverCodec is gRPC's proto codec, except that it decodes a *frame without
// failing: see frame. It is safe for concurrent use.
type serverCodec struct{}

func protoCodec() encoding.CodecV2 { return encoding.GetCodecV2(protoenc.Name) }

func (serverCodec) Marshal(v any) (mem.BufferSlice, error) { return protoCodec().Marshal(v) }

func (serverCodec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*frame)
	if !ok {
		return protoCodec().Unmarshal(data, v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	b := buf.ReadOnlyData()
	if f.err = proto.Unmarshal(b, f.Message); f.err != nil {
		f.raw = append([]byte(nil), b...) // at most MaxRequestBytes
	}
	return nil
}

func (serverCodec) Name() string { return protoenc.Name }

// serviceDesc is leaseholdpb's service description with handlers that decode
// into a frame, so that a request that does not decode gets INVALID_ARGUMENT.
var serviceDesc = grpc.ServiceDesc{
	ServiceName: pb.Leasehold_ServiceDesc.ServiceName,
	HandlerType: pb.Leasehold_ServiceDesc.HandlerType,
	Methods: []grpc.MethodDesc{
		{MethodName: "Acquire", Handler: handler(pb.Leasehold_Acquire_FullMethodName, (*Server).Acquire)},
		{MethodName: "Release", Handler: handler(pb.Leasehold_Release_FullMethodName, (*Server).Release)},
		{MethodName: "SetLimit", Handler: handler(pb.Leasehold_SetLimit_FullMethodName, (*Server).SetLimit)},
		{MethodName: "GetLimit", Handler: handler(pb.Leasehold_GetLimit_FullMethodName, (*Server).GetLimit)},
		{MethodName: "DeleteLimit", Handler: handler(pb.Leasehold_DeleteLimit_FullMethodName, (*Server).DeleteLimit)},
		{MethodName: "Status", Handler: handler(pb.Leasehold_Status_FullMethodName, (*Server).Status)},
		{MethodName: "Charge", Handler: handler(pb.Leasehold_Charge_FullMethodName, (*Server).Charge)},
		{MethodName: "Extend", Handler: handler(pb.Leasehold_Extend_FullMethodName, (*Server).Extend)},
		{MethodName: "Restrict", Handler: handler(pb.Leasehold_Restrict_FullMethodName, (*Server).Restrict)},
		{MethodName: "Members", Handler: handler(pb.Leasehold_Members_FullMethodName, (*Server).Members)},
		{MethodName: "RemoveMember", Handler: handler(pb.Leasehold_RemoveMember_FullMethodName, (*Server).RemoveMember)},
		{MethodName: "ListLimits", Handler: handler(pb.Leasehold_ListLimits_FullMethodName, (*Server).ListLimits)},
		{MethodName: "DeleteLimits", Handler: handler(pb.Leasehold_DeleteLimits_FullMethodName, (*Server).DeleteLimits)},
	},
	Streams: []grpc.StreamDesc{{
		StreamName: "AcquireStream",
		Handler: func(srv any, ss grpc.ServerStream) error {
			return srv.(*Server).AcquireStream(&grpc.GenericServerStream[pb.AcquireStreamRequest, pb.AcquireStreamResponse]{ServerStream: ss})
		},
		ServerStreams: true,
		ClientStreams: true,
	}},
	Metadata: pb.Leasehold_ServiceDesc.Metadata,
}

// handler returns the gRPC handler of one unary method, as generated code
// writes it, except that a request that does not decode still goes through
// the server's interceptors (which may refuse the caller first) and is then
// answered INVALID_ARGUMENT without reaching the Server.
func handler[Req any, PReq interface {
	*Req
	proto.Message
}, Resp any](method string, call func(*Server, context.Context, PReq) (Resp, error)) grpc.MethodHandler {
	return func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
		in := PReq(new(Req))
		f := &frame{Message: in}
		if err := dec(f); err != nil {
			// Receiving failed, and gRPC has already sent its status (for a
			// request above MaxRecvMsgSize, RESOURCE_EXHAUSTED).
			return nil, err
		}
		s := srv.(*Server)
		h := func(ctx context.Context, req any) (any, error) {
			if f.err != nil {
				return nil, ToStatus(decodeError(f))
			}
			return call(s, ctx, req.(PReq))
		}
		if interceptor == nil {
			return h(ctx, in)
		}
		return interceptor(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: method}, h)
	}
}

// decodeError describes why f did not decode, as an *InvalidError: the field
// whose string is not UTF-8 if one is (every string of a request is a key),
// else protobuf's own error.
func decodeError(f *frame) *InvalidError {
	if ie, ok := f.err.(*InvalidError); ok {
		return ie
	}
	if field, ok := badUTF8(f.raw, f.Message.ProtoReflect().Descriptor(), ""); ok {
		return &InvalidError{Field: field, Reason: "key is not valid UTF-8; keys are UTF-8 strings"}
	}
	return &InvalidError{Reason: fmt.Sprintf("the request does not decode as a %s: %v",
		f.Message.ProtoReflect().Descriptor().FullName(), f.err)}
}

// badUTF8 looks through b, a message of type md, for the first string field
// that is not valid UTF-8, and returns its path (items[2].key) under prefix.
// It reads what it can of a malformed message and stops at the first
// malformed byte.
func badUTF8(b []byte, md protoreflect.MessageDescriptor, prefix string) (string, bool) {
	seen := make(map[protowire.Number]int) // occurrences so far, for repeated fields' indices
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", false
		}
		b = b[n:]
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return "", false
		}
		value := b[:m]
		b = b[m:]
		fd := md.Fields().ByNumber(num)
		if fd == nil || typ != protowire.BytesType {
			continue
		}
		path := prefix + string(fd.Name())
		if fd.Cardinality() == protoreflect.Repeated {
			path += "[" + strconv.Itoa(seen[num]) + "]"
			seen[num]++
		}
		v, _ := protowire.ConsumeBytes(value)
		switch fd.Kind() {
		case protoreflect.StringKind:
			if !utf8.Valid(v) {
				return path, true
			}
		case protoreflect.MessageKind:
			if p, ok := badUTF8(v, fd.Message(), path+"."); ok {
				return p, true
			}
		}
	}
	return "", false
}
