package reapi

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// FindMissingBlobs is the largest request Bazel sends often: thousands of digests before
// every upload. Decoded by the proto codec, each digest costs two allocations (the Digest
// message and its hash string), and the answer is marshalled again from the messages it
// echoes; on a call of 1,000 digests that was about half of the server's CPU. So the CAS
// service is registered with a FindMissingBlobs handler (casServiceDesc) whose request
// serverCodec decodes straight from the wire: one string holds the request, every hash is a
// substring of it, and the response is the missing digests' own wire bytes, re-tagged.

// Field numbers of FindMissingBlobsRequest, FindMissingBlobsResponse and Digest, read from
// the generated descriptors.
var (
	findMissingInstanceName   = fieldNumber(&repb.FindMissingBlobsRequest{}, "instance_name")
	findMissingBlobDigests    = fieldNumber(&repb.FindMissingBlobsRequest{}, "blob_digests")
	findMissingDigestFunction = fieldNumber(&repb.FindMissingBlobsRequest{}, "digest_function")
	findMissingResponseBlobs  = fieldNumber(&repb.FindMissingBlobsResponse{}, "missing_blob_digests")
	digestHash                = fieldNumber(&repb.Digest{}, "hash")
	digestSizeBytes           = fieldNumber(&repb.Digest{}, "size_bytes")
)

func fieldNumber(m proto.Message, name protoreflect.Name) protowire.Number {
	f := m.ProtoReflect().Descriptor().Fields().ByName(name)
	if f == nil {
		panic(fmt.Sprintf("%s has no field %s", m.ProtoReflect().Descriptor().FullName(), name))
	}
	return f.Number()
}

// findMissingRequest is a FindMissingBlobsRequest decoded by serverCodec.
type findMissingRequest struct {
	wire           string // the request as received; hashes and messages are parts of it
	instanceName   string
	digestFunction repb.DigestFunction_Value
	digests        []wireDigest
}

// wireDigest is one Digest of the request: its fields, and where its message lies in wire.
type wireDigest struct {
	hash       string
	size       int64
	start, end int
}

// GetInstanceName lets the policy interceptor read the namespace as from any REAPI request.
func (r *findMissingRequest) GetInstanceName() string { return r.instanceName }

// errMalformedRequest is what a request that is not valid protobuf fails with; gRPC answers
// the decoding error INTERNAL, as it does for any message its proto codec cannot decode.
var errMalformedRequest = errors.New("malformed FindMissingBlobsRequest")

// decode parses b (proto3 rules: the last value of a scalar field wins, unknown fields and
// fields of an unexpected wire type are skipped, strings must be valid UTF-8).
func (r *findMissingRequest) decode(b []byte) error {
	r.wire = string(b)
	w := r.wire
	// A Digest of a SHA-256 hash takes 70 bytes or more with its tag: room for all of them.
	r.digests = make([]wireDigest, 0, len(b)/70+1)
	for pos := 0; pos < len(w); {
		num, typ, n := consumeTag(b[pos:])
		if n < 0 {
			return fmt.Errorf("%w: %v", errMalformedRequest, protowire.ParseError(n))
		}
		pos += n
		switch {
		case num == findMissingInstanceName && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b[pos:])
			if n < 0 {
				return fmt.Errorf("%w: instance_name: %v", errMalformedRequest, protowire.ParseError(n))
			}
			if !utf8.Valid(v) {
				return fmt.Errorf("%w: instance_name is not valid UTF-8", errMalformedRequest)
			}
			start := pos + n - len(v)
			r.instanceName = w[start : start+len(v)]
			pos += n
		case num == findMissingBlobDigests && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b[pos:])
			if n < 0 {
				return fmt.Errorf("%w: blob_digests[%d]: %v", errMalformedRequest, len(r.digests), protowire.ParseError(n))
			}
			start := pos + n - len(v)
			d, err := decodeDigest(b, w, start, start+len(v))
			if err != nil {
				return fmt.Errorf("%w: blob_digests[%d]: %v", errMalformedRequest, len(r.digests), err)
			}
			r.digests = append(r.digests, d)
			pos += n
		case num == findMissingDigestFunction && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b[pos:])
			if n < 0 {
				return fmt.Errorf("%w: digest_function: %v", errMalformedRequest, protowire.ParseError(n))
			}
			r.digestFunction = repb.DigestFunction_Value(int32(v))
			pos += n
		default:
			n := protowire.ConsumeFieldValue(num, typ, b[pos:])
			if n < 0 {
				return fmt.Errorf("%w: field %d: %v", errMalformedRequest, num, protowire.ParseError(n))
			}
			pos += n
		}
	}
	return nil
}

// decodeDigest parses the Digest message at [start, end) of the request, b and its string w.
func decodeDigest(whole []byte, w string, start, end int) (wireDigest, error) {
	d := wireDigest{start: start, end: end}
	b := whole[start:end]
	for pos := 0; pos < len(b); {
		num, typ, n := consumeTag(b[pos:])
		if n < 0 {
			return d, protowire.ParseError(n)
		}
		pos += n
		switch {
		case num == digestHash && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b[pos:])
			if n < 0 {
				return d, fmt.Errorf("hash: %v", protowire.ParseError(n))
			}
			if !utf8.Valid(v) {
				return d, errors.New("hash is not valid UTF-8")
			}
			at := start + pos + n - len(v)
			d.hash = w[at : at+len(v)]
			pos += n
		case num == digestSizeBytes && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b[pos:])
			if n < 0 {
				return d, fmt.Errorf("size_bytes: %v", protowire.ParseError(n))
			}
			d.size = int64(v)
			pos += n
		default:
			n := protowire.ConsumeFieldValue(num, typ, b[pos:])
			if n < 0 {
				return d, fmt.Errorf("field %d: %v", num, protowire.ParseError(n))
			}
			pos += n
		}
	}
	return d, nil
}

// consumeTag is protowire.ConsumeTag, also refusing a field number above the largest valid
// one (as proto.Unmarshal does).
func consumeTag(b []byte) (protowire.Number, protowire.Type, int) {
	num, typ, n := protowire.ConsumeTag(b)
	if n >= 0 && num > protowire.MaxValidNumber {
		return 0, 0, -2 // errCodeFieldNumber: "invalid field number"
	}
	return num, typ, n
}

// findMissingResponse is a FindMissingBlobsResponse already encoded; serverCodec sends it
// as is.
type findMissingResponse struct {
	wire []byte
}

// casServiceDesc is the ContentAddressableStorage service with FindMissingBlobs decoded from
// the wire (findMissingRequest); the other methods are the generated ones.
func casServiceDesc() *grpc.ServiceDesc {
	desc := repb.ContentAddressableStorage_ServiceDesc
	desc.Methods = slices.Clone(desc.Methods)
	for i := range desc.Methods {
		if desc.Methods[i].MethodName == "FindMissingBlobs" {
			desc.Methods[i].Handler = findMissingWireHandler
		}
	}
	return &desc
}

// findMissingWireHandler is the generated handler's shape, over findMissingRequest.
func findMissingWireHandler(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	in := new(findMissingRequest)
	if err := dec(in); err != nil {
		return nil, err
	}
	c := srv.(*casServer)
	if interceptor == nil {
		return c.findMissingWire(ctx, in)
	}
	info := &grpc.UnaryServerInfo{Server: srv, FullMethod: repb.ContentAddressableStorage_FindMissingBlobs_FullMethodName}
	return interceptor(ctx, in, info, func(ctx context.Context, req any) (any, error) {
		return c.findMissingWire(ctx, req.(*findMissingRequest))
	})
}

// findMissingWire answers a wire-decoded request with the missing digests' own bytes.
func (c *casServer) findMissingWire(ctx context.Context, req *findMissingRequest) (*findMissingResponse, error) {
	hashes := make([]string, len(req.digests))
	sizes := make([]int64, len(req.digests))
	for i, d := range req.digests {
		hashes[i], sizes[i] = d.hash, d.size
	}
	missing, err := c.findMissing(ctx, req.instanceName, req.digestFunction, hashes, sizes)
	if err != nil {
		return nil, err
	}
	size := 0
	for _, i := range missing {
		d := req.digests[i]
		size += protowire.SizeTag(findMissingResponseBlobs) + protowire.SizeBytes(d.end-d.start)
	}
	out := make([]byte, 0, size)
	for _, i := range missing {
		d := req.digests[i]
		out = protowire.AppendTag(out, findMissingResponseBlobs, protowire.BytesType)
		out = protowire.AppendVarint(out, uint64(d.end-d.start))
		out = append(out, req.wire[d.start:d.end]...)
	}
	return &findMissingResponse{wire: out}, nil
}
