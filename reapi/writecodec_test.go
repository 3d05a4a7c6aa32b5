package reapi

import (
	"bytes"
	"encoding/hex"
	mrand "math/rand/v2"
	"testing"

	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// splitBuffers cuts wire into buffers at random points, as gRPC's transport holds a message
// received in several HTTP/2 data frames.
func splitBuffers(rng *mrand.Rand, wire []byte) mem.BufferSlice {
	var bs mem.BufferSlice
	for len(wire) > 0 {
		n := 1 + rng.IntN(min(len(wire), 20_000))
		if rng.IntN(8) == 0 {
			n = min(len(wire), 1+rng.IntN(3)) // tiny pieces cut varints and tags apart
		}
		bs = append(bs, mem.SliceBuffer(bytes.Clone(wire[:n])))
		wire = wire[n:]
	}
	return bs
}

// checkDecodesLikeProto decodes wire with writeChunk and with proto.Unmarshal and requires the
// same message (or both to fail).
func checkDecodesLikeProto(t *testing.T, wire []byte, bufs mem.BufferSlice) {
	t.Helper()
	var want bspb.WriteRequest
	wantErr := proto.Unmarshal(wire, &want)
	var got writeChunk
	gotErr := got.decode(bufs)
	defer got.free()
	if (wantErr != nil) != (gotErr != nil) {
		t.Fatalf("wire %x: proto error %v, writeChunk error %v", wire, wantErr, gotErr)
	}
	if wantErr != nil {
		return
	}
	var data []byte
	for _, p := range got.data {
		data = append(data, p...)
	}
	if got.resourceName != want.GetResourceName() || got.writeOffset != want.GetWriteOffset() ||
		got.finishWrite != want.GetFinishWrite() || !bytes.Equal(data, want.GetData()) {
		t.Fatalf("wire %x: writeChunk {%q %d %v %d bytes}, proto {%q %d %v %d bytes}", wire,
			got.resourceName, got.writeOffset, got.finishWrite, len(data),
			want.GetResourceName(), want.GetWriteOffset(), want.GetFinishWrite(), len(want.GetData()))
	}
}

// TestWriteCodecDecodesLikeProto: a WriteRequest decoded by writeChunk from buffers cut at
// random points has the fields proto.Unmarshal finds, including with unknown fields, fields
// repeated (the last wins), a known field of another wire type (skipped as unknown), and
// truncated messages (both fail).
func TestWriteCodecDecodesLikeProto(t *testing.T) {
	seed := uint64(mrand.Int64())
	t.Logf("seed %d", seed)
	rng := mrand.New(mrand.NewPCG(seed, 1))
	for i := 0; i < 2000; i++ {
		req := &bspb.WriteRequest{WriteOffset: rng.Int64N(1 << 40), FinishWrite: rng.IntN(2) == 0}
		if rng.IntN(2) == 0 {
			req.ResourceName = "uploads/x/blobs/" + hex.EncodeToString(randomBlob(1+rng.IntN(40), uint64(i)))
		}
		if rng.IntN(5) > 0 {
			req.Data = randomBlob(1+rng.IntN(200_000), uint64(i))
		}
		wire, err := proto.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		switch rng.IntN(6) {
		case 0: // unknown fields of every wire type
			wire = protowire.AppendTag(wire, 7, protowire.VarintType)
			wire = protowire.AppendVarint(wire, rng.Uint64())
			wire = protowire.AppendTag(wire, 8, protowire.Fixed32Type)
			wire = protowire.AppendFixed32(wire, rng.Uint32())
			wire = protowire.AppendTag(wire, 9, protowire.Fixed64Type)
			wire = protowire.AppendFixed64(wire, rng.Uint64())
			wire = protowire.AppendTag(wire, 11, protowire.BytesType)
			wire = protowire.AppendBytes(wire, randomBlob(1+rng.IntN(100), uint64(i)))
		case 1: // a repeated data field and offset: the last occurrence wins
			wire = protowire.AppendTag(wire, writeRequestData, protowire.BytesType)
			wire = protowire.AppendBytes(wire, randomBlob(1+rng.IntN(1000), uint64(i)+7))
			wire = protowire.AppendTag(wire, writeRequestWriteOffset, protowire.VarintType)
			wire = protowire.AppendVarint(wire, rng.Uint64N(1<<50))
		case 2: // a known field number with another wire type is an unknown field
			wire = protowire.AppendTag(wire, writeRequestData, protowire.Fixed64Type)
			wire = protowire.AppendFixed64(wire, rng.Uint64())
		case 3: // a resource name that is not UTF-8 fails as in proto3
			wire = protowire.AppendTag(wire, writeRequestResourceName, protowire.BytesType)
			wire = protowire.AppendBytes(wire, []byte{0xff, 0xfe, 'x'})
		case 4: // truncated
			if len(wire) > 1 {
				wire = wire[:rng.IntN(len(wire)-1)+1]
			}
		}
		checkDecodesLikeProto(t, wire, splitBuffers(rng, wire))
	}
}

// TestWriteCodecHoldsTheBuffers: the decoded data stays readable after gRPC frees its own
// reference (as it does when Unmarshal returns), and free gives the buffers back.
func TestWriteCodecHoldsTheBuffers(t *testing.T) {
	data := randomBlob(100_000, 3)
	wire, _ := proto.Marshal(&bspb.WriteRequest{ResourceName: "r", Data: data})
	freed := 0
	pool := poolFunc(func(*[]byte) { freed++ })
	var bufs mem.BufferSlice
	for rest := wire; len(rest) > 0; {
		n := min(len(rest), 16<<10)
		b := bytes.Clone(rest[:n])
		bufs = append(bufs, mem.NewBuffer(&b, pool))
		rest = rest[n:]
	}
	var c writeChunk
	if err := newServerCodec().Unmarshal(bufs, &c); err != nil {
		t.Fatal(err)
	}
	bufs.Free() // gRPC's reference
	if freed != 0 {
		t.Fatalf("%d buffers given back while the chunk still holds them", freed)
	}
	var got []byte
	for _, p := range c.data {
		got = append(got, p...)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("decoded data differs")
	}
	c.free()
	if freed != len(bufs) {
		t.Fatalf("free gave back %d of %d buffers", freed, len(bufs))
	}
}

// FuzzWriteCodec: any input decodes like proto.Unmarshal, however it is split.
func FuzzWriteCodec(f *testing.F) {
	for _, req := range []*bspb.WriteRequest{
		{ResourceName: "uploads/u/blobs/abc/3", Data: []byte("abc"), FinishWrite: true},
		{WriteOffset: 1 << 33, Data: randomBlob(5000, 1)},
	} {
		wire, _ := proto.Marshal(req)
		f.Add(wire, uint64(1))
	}
	f.Fuzz(func(t *testing.T, wire []byte, seed uint64) {
		checkDecodesLikeProto(t, wire, splitBuffers(mrand.New(mrand.NewPCG(seed, 2)), wire))
	})
}
