package reapi

import (
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// ByteStream Write receives its data without copying it out of gRPC's buffers: the codec
// decodes a WriteRequest into a writeChunk whose data are pieces of the buffers gRPC read
// the message into (it keeps a reference to them until the next message), and the store
// writes those pieces where they go (storage.ChunkReader). The default proto codec joined a
// message's buffers into one (a copy) and then copied the data field into a fresh slice
// (a second copy, and a 1 MiB allocation per message for the collector to clear); before
// this the upload also went through an io.Pipe into the store's own copy buffer.

// The WriteRequest fields (google/bytestream/bytestream.proto).
const (
	writeRequestResourceName protowire.Number = 1
	writeRequestWriteOffset  protowire.Number = 2
	writeRequestFinishWrite  protowire.Number = 3
	writeRequestData         protowire.Number = 10
)

// writeChunk is a WriteRequest as byteStreamCodec decodes it. The data pieces alias held,
// which the chunk keeps a reference to until free (or until the next message is decoded
// into it); they must not be used afterwards.
type writeChunk struct {
	resourceName string
	writeOffset  int64
	finishWrite  bool
	data         [][]byte
	held         mem.BufferSlice
}

// dataLen is the number of data bytes the message carries.
func (w *writeChunk) dataLen() int64 {
	n := 0
	for _, p := range w.data {
		n += len(p)
	}
	return int64(n)
}

// free gives the message's buffers back to gRPC.
func (w *writeChunk) free() {
	if w.held != nil {
		w.held.Free()
		w.held = nil
	}
	clear(w.data)
	w.data = w.data[:0]
}

var errMalformedWriteRequest = errors.New("malformed WriteRequest")

// decode parses a WriteRequest from the message's buffers, with proto's rules: unknown
// fields (and known ones of another wire type) are skipped, a repeated field's last
// occurrence wins.
func (w *writeChunk) decode(msg mem.BufferSlice) error {
	w.free()
	w.resourceName, w.writeOffset, w.finishWrite = "", 0, false
	c := bufferCursor{bufs: msg}
	total := uint64(msg.Len())
	for c.more() {
		num, typ, err := c.tag()
		if err != nil {
			return err
		}
		switch typ {
		case protowire.VarintType:
			v, err := c.varint()
			if err != nil {
				return err
			}
			switch num {
			case writeRequestWriteOffset:
				w.writeOffset = int64(v)
			case writeRequestFinishWrite:
				w.finishWrite = v != 0
			}
		case protowire.BytesType:
			n, err := c.varint()
			if err != nil {
				return err
			}
			if n > total {
				return fmt.Errorf("%w: field %d is %d bytes long, the message %d", errMalformedWriteRequest, num, n, total)
			}
			switch num {
			case writeRequestResourceName:
				var name []byte
				if err = c.take(int(n), func(p []byte) { name = append(name, p...) }); err == nil && !utf8.Valid(name) {
					err = fmt.Errorf("%w: resource_name is not valid UTF-8", errMalformedWriteRequest) // as proto3 rules
				}
				w.resourceName = string(name)
			case writeRequestData:
				clear(w.data)
				w.data = w.data[:0]
				err = c.take(int(n), func(p []byte) { w.data = append(w.data, p) })
			default:
				err = c.take(int(n), func([]byte) {})
			}
			if err != nil {
				return err
			}
		case protowire.Fixed32Type:
			if err := c.take(4, func([]byte) {}); err != nil {
				return err
			}
		case protowire.Fixed64Type:
			if err := c.take(8, func([]byte) {}); err != nil {
				return err
			}
		case protowire.StartGroupType:
			if err := c.skipGroup(num); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: field %d has wire type %d", errMalformedWriteRequest, num, typ)
		}
	}
	if len(w.data) > 0 {
		msg.Ref() // gRPC frees its own reference once Unmarshal returns
		w.held = msg
	}
	return nil
}

// bufferCursor reads a message spread over several buffers (gRPC keeps each HTTP/2 data
// frame, 16 KiB by default, in a buffer of its own).
type bufferCursor struct {
	bufs mem.BufferSlice
	next int    // the next buffer to read
	cur  []byte // the unread rest of the current one
}

// more reports whether any byte is left, moving to the next non-empty buffer if needed.
func (c *bufferCursor) more() bool {
	for len(c.cur) == 0 {
		if c.next == len(c.bufs) {
			return false
		}
		c.cur = c.bufs[c.next].ReadOnlyData()
		c.next++
	}
	return true
}

// tag reads a field's tag, refusing field numbers proto refuses.
func (c *bufferCursor) tag() (protowire.Number, protowire.Type, error) {
	tag, err := c.varint()
	if err != nil {
		return 0, 0, err
	}
	if tag>>3 < uint64(protowire.MinValidNumber) || tag>>3 > uint64(protowire.MaxValidNumber) {
		return 0, 0, fmt.Errorf("%w: field number %d", errMalformedWriteRequest, tag>>3)
	}
	num, typ := protowire.DecodeTag(tag)
	return num, typ, nil
}

func (c *bufferCursor) varint() (uint64, error) {
	if !c.more() {
		return 0, io.ErrUnexpectedEOF
	}
	if v, n := protowire.ConsumeVarint(c.cur); n > 0 {
		c.cur = c.cur[n:]
		return v, nil
	}
	// The varint is cut by the end of a buffer (or malformed): byte by byte.
	var v uint64
	for shift := uint(0); shift < 64; shift += 7 {
		if !c.more() {
			return 0, io.ErrUnexpectedEOF
		}
		b := c.cur[0]
		c.cur = c.cur[1:]
		if shift == 63 && b > 1 {
			// The tenth byte holds only the 64th bit; anything more overflows, as proto says.
			break
		}
		v |= uint64(b&0x7f) << shift
		if b < 0x80 {
			return v, nil
		}
	}
	return 0, fmt.Errorf("%w: varint overflows 64 bits", errMalformedWriteRequest)
}

// maxGroupDepth bounds the nesting of unknown groups, like proto's recursion limit.
const maxGroupDepth = 10_000

// skipGroup skips an unknown (deprecated) group field up to its end tag, nested groups
// included.
func (c *bufferCursor) skipGroup(num protowire.Number) error {
	open := []protowire.Number{num}
	for len(open) > 0 {
		n, typ, err := c.tag()
		if err != nil {
			return err
		}
		switch typ {
		case protowire.VarintType:
			_, err = c.varint()
		case protowire.Fixed32Type:
			err = c.take(4, func([]byte) {})
		case protowire.Fixed64Type:
			err = c.take(8, func([]byte) {})
		case protowire.BytesType:
			var l uint64
			if l, err = c.varint(); err == nil {
				if l > uint64(c.bufs.Len()) {
					return fmt.Errorf("%w: field %d is %d bytes long", errMalformedWriteRequest, n, l)
				}
				err = c.take(int(l), func([]byte) {})
			}
		case protowire.StartGroupType:
			if len(open) == maxGroupDepth {
				return fmt.Errorf("%w: groups nested deeper than %d", errMalformedWriteRequest, maxGroupDepth)
			}
			open = append(open, n)
		case protowire.EndGroupType:
			if n != open[len(open)-1] {
				return fmt.Errorf("%w: group %d ended by %d", errMalformedWriteRequest, open[len(open)-1], n)
			}
			open = open[:len(open)-1]
		default:
			return fmt.Errorf("%w: field %d has wire type %d", errMalformedWriteRequest, n, typ)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// take hands the next n bytes to fn, in as many pieces as buffers they span.
func (c *bufferCursor) take(n int, fn func([]byte)) error {
	for n > 0 {
		if !c.more() {
			return io.ErrUnexpectedEOF
		}
		k := min(n, len(c.cur))
		fn(c.cur[:k])
		c.cur, n = c.cur[k:], n-k
	}
	return nil
}
