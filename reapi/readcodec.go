package reapi

import (
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// ByteStream Read sends its chunks without a copy of their data: the store reads each chunk
// straight into a pooled buffer, and serverCodec encodes the ReadResponse around it (a few
// bytes of field header, then the buffer itself) instead of marshalling a fresh copy. gRPC's
// transport holds its own reference to the buffer until the bytes are written to the
// connection, and the last reference returns it to chunkPool. The default proto codec would
// allocate and zero a new message buffer and copy every megabyte into it: with the 1 MiB
// allocation of the chunk itself that was a third of a large read's server CPU.

// chunkPool recycles ByteStream Read chunk buffers (readChunkBytes each). Unlike gRPC's
// default pool it does not clear a recycled buffer: every byte of a chunk is overwritten by
// the store's read before the chunk is sent, and a chunk whose read failed is never sent.
var chunkPool = &fixedPool{size: readChunkBytes}

type fixedPool struct {
	size int
	pool sync.Pool
}

var _ mem.BufferPool = (*fixedPool)(nil)

func (p *fixedPool) Get(n int) *[]byte {
	if n > p.size {
		b := make([]byte, n)
		return &b
	}
	if b, ok := p.pool.Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, p.size)
	return &b
}

func (p *fixedPool) Put(b *[]byte) {
	if cap(*b) == p.size {
		p.pool.Put(b)
	}
}

// readChunk is a ReadResponse whose data is a pooled buffer; only serverCodec can encode it.
// Sending it hands the buffer's reference to gRPC.
type readChunk struct {
	data mem.Buffer
}

// serverCodec is the server's codec: the standard proto codec, except for readChunk (encoded
// here), writeChunk (decoded in writecodec.go) and the wire-level FindMissingBlobs messages
// (findmissing_wire.go).
type serverCodec struct {
	encoding.CodecV2
}

func newServerCodec() serverCodec { return serverCodec{CodecV2: encoding.GetCodecV2(proto.Name)} }

// readResponseData is ReadResponse's one field, `bytes data = 10` (google/bytestream).
const readResponseData protowire.Number = 10

// Marshal encodes a readChunk as the ReadResponse wire format (field 10, bytes): a tag and
// length header and the data buffer, which the returned slice now owns. A findMissingResponse
// is already encoded.
func (c serverCodec) Marshal(v any) (mem.BufferSlice, error) {
	if fm, ok := v.(*findMissingResponse); ok {
		if len(fm.wire) == 0 {
			return nil, nil
		}
		return mem.BufferSlice{mem.SliceBuffer(fm.wire)}, nil
	}
	rc, ok := v.(*readChunk)
	if !ok {
		return c.CodecV2.Marshal(v)
	}
	n := rc.data.Len()
	if n == 0 {
		rc.data.Free()
		return nil, nil // an empty ReadResponse encodes to nothing
	}
	hdr := protowire.AppendTag(make([]byte, 0, 12), readResponseData, protowire.BytesType)
	hdr = protowire.AppendVarint(hdr, uint64(n))
	out := mem.BufferSlice{mem.SliceBuffer(hdr), rc.data}
	rc.data = nil
	return out, nil
}

// Unmarshal decodes a writeChunk from gRPC's buffers without copying its data, and a
// findMissingRequest from the wire; everything else goes to proto.
func (c serverCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if wc, ok := v.(*writeChunk); ok {
		return wc.decode(data)
	}
	if fm, ok := v.(*findMissingRequest); ok {
		if len(data) == 1 {
			return fm.decode(data[0].ReadOnlyData()) // decode copies it
		}
		return fm.decode(data.Materialize())
	}
	return c.CodecV2.Unmarshal(data, v)
}

// codecOption is the server option that installs serverCodec; every server that registers
// the ByteStream or CAS service must have it (ServerOptions includes it).
func codecOption() grpc.ServerOption { return grpc.ForceServerCodecV2(newServerCodec()) }
