package local

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"testing"
	"testing/iotest"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/storagetest"
)

// chunkBody is a storage.ChunkReader over body in pieces of the given size; it counts what
// it handed out and can fail after failAfter bytes.
type chunkBody struct {
	rest      []byte
	piece     int
	handedOut int
	failAfter int // < 0: never
}

var errClientGone = errors.New("client went away")

func (c *chunkBody) NextChunk() ([]byte, error) {
	if c.failAfter >= 0 && c.handedOut >= c.failAfter {
		return nil, errClientGone
	}
	if len(c.rest) == 0 {
		return nil, io.EOF
	}
	n := min(c.piece, len(c.rest))
	p := c.rest[:n]
	c.rest = c.rest[n:]
	c.handedOut += n
	return p, nil
}

func (c *chunkBody) Read(p []byte) (int, error) {
	panic("a store given a ChunkReader must take its chunks")
}

// TestPutChunkReader: a body that hands out its chunks is stored exactly (in memory and
// spilled), and a body over the limit, longer or shorter than declared, with the wrong
// digest or failing mid-stream stores nothing and leaves no staging file or segment bytes;
// the store never writes past the limit.
func TestPutChunkReader(t *testing.T) {
	opts := testOpts(t)
	opts.SpillThreshold = 64 << 10
	s := openStore(t, opts)
	for i, size := range []int{1, 64 << 10, 3<<20 + 17} {
		body := storagetest.Bytes(uint64(i), size)
		sum := sha256.Sum256(body)
		key := cas("chunks-" + string(rune('a'+i)))
		res, err := s.Put(ctx(t), key, &chunkBody{rest: body, piece: 40_000, failAfter: -1},
			storage.PutOptions{Size: int64(size), ExpectedSHA256: &sum})
		if err != nil || !res.Created {
			t.Fatalf("put %d bytes: %+v %v", size, res, err)
		}
		if got, err := read(t, s, key); err != nil || !bytes.Equal(got, body) {
			t.Fatalf("read %d bytes back: %v (equal %v)", size, err, bytes.Equal(got, body))
		}
	}
	before := s.segs.TotalBytes()

	body := storagetest.Bytes(9, 2<<20)
	sum := sha256.Sum256(body)
	wrong := sum
	wrong[0] ^= 1
	for _, tc := range []struct {
		name string
		c    *chunkBody
		opts storage.PutOptions
		want error
	}{
		{"over the limit, size unknown", &chunkBody{rest: body, piece: 100_000, failAfter: -1},
			storage.PutOptions{Size: storage.UnknownSize, Limit: 1 << 20}, storage.ErrTooLarge},
		{"longer than declared", &chunkBody{rest: body, piece: 100_000, failAfter: -1},
			storage.PutOptions{Size: 1 << 20}, storage.ErrDigestMismatch},
		{"shorter than declared", &chunkBody{rest: body, piece: 100_000, failAfter: -1},
			storage.PutOptions{Size: 3 << 20}, storage.ErrDigestMismatch},
		{"wrong digest", &chunkBody{rest: body, piece: 100_000, failAfter: -1},
			storage.PutOptions{Size: int64(len(body)), ExpectedSHA256: &wrong}, storage.ErrDigestMismatch},
		{"client fails mid-stream", &chunkBody{rest: body, piece: 100_000, failAfter: 1 << 20},
			storage.PutOptions{Size: int64(len(body))}, errClientGone},
	} {
		key := cas("refused " + tc.name)
		_, err := s.Put(ctx(t), key, tc.c, tc.opts)
		if !errors.Is(err, tc.want) {
			t.Fatalf("%s: Put = %v, want %v", tc.name, err, tc.want)
		}
		if err := statErr(t, s, key); !isNotFound(err) {
			t.Fatalf("%s: something was stored: %v", tc.name, err)
		}
		if tc.opts.Limit > 0 && tc.c.handedOut > int(tc.opts.Limit)+tc.c.piece {
			t.Fatalf("%s: the store asked for %d bytes, past the limit %d and one chunk", tc.name, tc.c.handedOut, tc.opts.Limit)
		}
		assertNoStaging(t, s)
		if after := s.segs.TotalBytes(); after != before {
			t.Fatalf("%s: segment bytes grew from %d to %d", tc.name, before, after)
		}
	}
}

// TestPutReadsIntoMemory: bodies around the spill threshold, from readers that end with or
// after their last bytes and that return short reads, are stored exactly whether they stay
// in memory or spill; a reader failing mid-body stores nothing.
func TestPutReadsIntoMemory(t *testing.T) {
	opts := testOpts(t)
	opts.SpillThreshold = 64 << 10
	s := openStore(t, opts)
	readers := map[string]func([]byte) io.Reader{
		"plain":          func(b []byte) io.Reader { return bytes.NewReader(b) },
		"eof with data":  func(b []byte) io.Reader { return iotest.DataErrReader(bytes.NewReader(b)) },
		"half reads":     func(b []byte) io.Reader { return iotest.HalfReader(bytes.NewReader(b)) },
		"one byte reads": func(b []byte) io.Reader { return iotest.OneByteReader(bytes.NewReader(b)) },
	}
	i := 0
	for name, newReader := range readers {
		for _, size := range []int{1, 64<<10 - 1, 64 << 10, 64<<10 + 1, 300 << 10} {
			for _, declared := range []bool{true, false} {
				i++
				body := storagetest.Bytes(uint64(i), size)
				key := cas(fmt.Sprintf("mem-%d", i))
				o := storage.PutOptions{Size: storage.UnknownSize}
				if declared {
					o.Size = int64(size)
				}
				if _, err := s.Put(ctx(t), key, newReader(body), o); err != nil {
					t.Fatalf("%s, %d bytes (declared %v): %v", name, size, declared, err)
				}
				if got, err := read(t, s, key); err != nil || !bytes.Equal(got, body) {
					t.Fatalf("%s, %d bytes (declared %v): read back %v, equal %v", name, size, declared, err, bytes.Equal(got, body))
				}
			}
		}
	}
	before := s.segs.TotalBytes()
	for _, size := range []int{10 << 10, 200 << 10} {
		key := cas(fmt.Sprintf("failing-%d", size))
		r := io.MultiReader(bytes.NewReader(storagetest.Bytes(5, size)), iotest.ErrReader(errClientGone))
		if _, err := s.Put(ctx(t), key, r, storage.PutOptions{Size: int64(size) + 1}); !errors.Is(err, errClientGone) {
			t.Fatalf("%d bytes then a failure: Put = %v", size, err)
		}
		if err := statErr(t, s, key); !isNotFound(err) {
			t.Fatalf("a failed body was stored: %v", err)
		}
	}
	assertNoStaging(t, s)
	if after := s.segs.TotalBytes(); after != before {
		t.Fatalf("failed bodies left %d segment bytes", after-before)
	}
}
