package reapi

import (
	"context"

	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
)

// byteStreamServiceDesc mirrors the generated descriptor of google.bytestream.ByteStream.
// The genproto package only offers RegisterByteStreamServer(*grpc.Server, …) with its
// descriptor unexported, so this copy is what lets Register wrap ByteStream's handlers like
// every other service's.
var byteStreamServiceDesc = grpc.ServiceDesc{
	ServiceName: "google.bytestream.ByteStream",
	HandlerType: (*bspb.ByteStreamServer)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "QueryWriteStatus",
		Handler:    byteStreamQueryWriteStatusHandler,
	}},
	Streams: []grpc.StreamDesc{
		{StreamName: "Read", Handler: byteStreamReadHandler, ServerStreams: true},
		{StreamName: "Write", Handler: byteStreamWriteHandler, ClientStreams: true},
	},
	Metadata: "google/bytestream/bytestream.proto",
}

func byteStreamReadHandler(srv any, stream grpc.ServerStream) error {
	m := new(bspb.ReadRequest)
	if err := stream.RecvMsg(m); err != nil {
		return err
	}
	return srv.(bspb.ByteStreamServer).Read(m, &byteStreamReadStream{stream})
}

func byteStreamWriteHandler(srv any, stream grpc.ServerStream) error {
	return srv.(bspb.ByteStreamServer).Write(&byteStreamWriteStream{stream})
}

func byteStreamQueryWriteStatusHandler(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	in := new(bspb.QueryWriteStatusRequest)
	if err := dec(in); err != nil {
		return nil, err
	}
	if interceptor == nil {
		return srv.(bspb.ByteStreamServer).QueryWriteStatus(ctx, in)
	}
	info := &grpc.UnaryServerInfo{Server: srv, FullMethod: "/google.bytestream.ByteStream/QueryWriteStatus"}
	handler := func(ctx context.Context, req any) (any, error) {
		return srv.(bspb.ByteStreamServer).QueryWriteStatus(ctx, req.(*bspb.QueryWriteStatusRequest))
	}
	return interceptor(ctx, in, info, handler)
}

type byteStreamReadStream struct{ grpc.ServerStream }

func (x *byteStreamReadStream) Send(m *bspb.ReadResponse) error { return x.ServerStream.SendMsg(m) }

type byteStreamWriteStream struct{ grpc.ServerStream }

func (x *byteStreamWriteStream) SendAndClose(m *bspb.WriteResponse) error {
	return x.ServerStream.SendMsg(m)
}

func (x *byteStreamWriteStream) Recv() (*bspb.WriteRequest, error) {
	m := new(bspb.WriteRequest)
	if err := x.ServerStream.RecvMsg(m); err != nil {
		return nil, err
	}
	return m, nil
}
