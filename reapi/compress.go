package reapi

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// zstdMaxWindow caps the window a zstd frame may ask the decoder to allocate. Encoders at
// their default levels use at most 8 MiB; 64 MiB leaves room for long-distance modes while a
// hostile frame header cannot make the server reserve gigabytes.
const zstdMaxWindow = 64 << 20

// errExceedsDeclaredSize marks a compressed payload that decodes to more than its digest's
// size: the decompression-bomb guard.
var errExceedsDeclaredSize = fmt.Errorf("%w: data decompresses to more bytes than the digest's size", errInvalidArgument)

// codecs pools zstd encoders and decoders. Streaming encoders run with concurrency 1, so
// they are synchronous and hold no goroutines between uses; decoders likewise.
type codecs struct {
	encoders sync.Pool // *zstd.Encoder, reset to nil writers when idle
	decoders sync.Pool // *zstd.Decoder, reset to nil readers when idle
	// block compresses whole batch items (EncodeAll is safe for concurrent use).
	block *zstd.Encoder
}

func newCodecs() (*codecs, error) {
	block, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(0))
	if err != nil {
		return nil, fmt.Errorf("create the zstd block encoder: %w", err)
	}
	return &codecs{block: block}, nil
}

// encoder returns a streaming encoder writing to w; release it with putEncoder after Close.
func (c *codecs) encoder(w io.Writer) (*zstd.Encoder, error) {
	if e, ok := c.encoders.Get().(*zstd.Encoder); ok {
		e.Reset(w)
		return e, nil
	}
	e, err := zstd.NewWriter(w,
		zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(1),
		zstd.WithLowerEncoderMem(true))
	if err != nil {
		return nil, fmt.Errorf("create a zstd encoder: %w", err)
	}
	return e, nil
}

func (c *codecs) putEncoder(e *zstd.Encoder) {
	e.Reset(nil)
	c.encoders.Put(e)
}

// decoder returns a decoder reading r; release it with putDecoder.
func (c *codecs) decoder(r io.Reader) (*zstd.Decoder, error) {
	if d, ok := c.decoders.Get().(*zstd.Decoder); ok {
		if err := d.Reset(r); err == nil {
			return d, nil
		}
	}
	d, err := zstd.NewReader(r,
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(zstdMaxWindow))
	if err != nil {
		return nil, fmt.Errorf("create a zstd decoder: %w", err)
	}
	return d, nil
}

func (c *codecs) putDecoder(d *zstd.Decoder) {
	if err := d.Reset(nil); err == nil {
		c.decoders.Put(d)
	}
}

// boundedReader passes through at most limit bytes and fails with errExceedsDeclaredSize if
// the source has more, so a decompression bomb stops one byte past the declared size.
type boundedReader struct {
	r    io.Reader
	left int64
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.r.Read(p)
	if int64(n) > b.left {
		n = int(b.left)
		b.left = 0
		return n, errExceedsDeclaredSize
	}
	b.left -= int64(n)
	return n, err
}

// trackingReader remembers the first failure of its source other than io.EOF, so a failed
// Put can be blamed on the client's data (corrupt zstd, bomb) rather than on the store,
// whatever the store wraps around the error.
type trackingReader struct {
	r   io.Reader
	err error
}

func (t *trackingReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) && t.err == nil {
		t.err = err
	}
	return n, err
}

// dataError classifies a failure of a decoding reader as the client's: the data was not
// valid zstd, was truncated, or expanded past its declared size. Callers rule out failures of
// their own side (a receive error that closed the pipe) before asking.
func dataError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errExceedsDeclaredSize):
		return err
	}
	return fmt.Errorf("%w: decode zstd data: %v", errInvalidArgument, err)
}
