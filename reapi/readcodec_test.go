package reapi

import (
	"bytes"
	"testing"

	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// TestReadCodecEncodesAChunkAsAReadResponse: what serverCodec writes for a readChunk is exactly
// a ReadResponse to any proto decoder, and the chunk's buffer goes back to the pool once the
// encoded slice is freed (as gRPC's transport does after writing it).
func TestReadCodecEncodesAChunkAsAReadResponse(t *testing.T) {
	c := newServerCodec()
	for _, n := range []int{1, 127, 128, 5000, readChunkBytes} {
		data := randomBlob(n, uint64(n))
		b := chunkPool.Get(n)
		copy(*b, data)
		freed := false
		buf := mem.NewBuffer(b, poolFunc(func(p *[]byte) { freed = true; chunkPool.Put(p) }))
		out, err := c.Marshal(&readChunk{data: buf})
		if err != nil {
			t.Fatal(err)
		}
		var got bspb.ReadResponse
		if err := proto.Unmarshal(out.Materialize(), &got); err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if !bytes.Equal(got.GetData(), data) {
			t.Fatalf("%d bytes: decoded data differs: %x vs %x (wire %x)", n, got.GetData(), data, out.Materialize())
		}
		want, _ := proto.Marshal(&bspb.ReadResponse{Data: data})
		if !bytes.Equal(out.Materialize(), want) {
			t.Fatalf("%d bytes: encoding differs from proto.Marshal", n)
		}
		out.Free()
		if !freed && !mem.IsBelowBufferPoolingThreshold(n) {
			t.Fatalf("%d bytes: the chunk buffer was not given back", n)
		}
	}
	// Every other message goes through the proto codec.
	out, err := c.Marshal(&bspb.ReadResponse{Data: []byte("x")})
	if err != nil || !bytes.Equal(out.Materialize(), []byte{0x52, 1, 'x'}) {
		t.Fatalf("plain ReadResponse: %v %x", err, out.Materialize())
	}
	out.Free()
}

type poolFunc func(*[]byte)

func (f poolFunc) Get(n int) *[]byte { return chunkPool.Get(n) }
func (f poolFunc) Put(b *[]byte)     { f(b) }
