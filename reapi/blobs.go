package reapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/kuracache/kura/storage"
)

// contentType is what REAPI blobs and action results are stored with, so the Bazel HTTP
// cache serves them back as opaque bytes.
const contentType = "application/octet-stream"

// findMissingChunk bounds the keys passed to one Store.FindMissing call.
const findMissingChunk = 10000

// readBlob reads a whole CAS blob of at most limit bytes into memory. A stored blob whose size
// differs from the digest's is reported missing: that digest names nothing stored.
func (s *Server) readBlob(ctx context.Context, namespace string, d digest, limit int64) ([]byte, error) {
	if d.size == 0 {
		if d.isEmpty() {
			return []byte{}, nil
		}
		return nil, fmt.Errorf("blob %s: %w (only the empty blob has size 0)", d, storage.ErrNotFound)
	}
	if d.size > limit {
		return nil, fmt.Errorf("%w: blob %s is larger than the %d bytes this request may read into memory", errServerLimit, d, limit)
	}
	r, err := s.store.Open(ctx, casKey(s.tenant(), namespace, d), 0, -1)
	if err != nil {
		return nil, fmt.Errorf("open blob %s: %w", d, err)
	}
	defer func() { _ = r.Close() }()
	if err := checkStoredSize(r.Info(), d); err != nil {
		return nil, err
	}
	buf := make([]byte, d.size)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, fmt.Errorf("read blob %s: %w", d, err)
	}
	return buf, nil
}

// checkStoredSize compares a stored blob's size with the size a digest declares.
func checkStoredSize(info storage.Info, d digest) error {
	if info.Size != d.size {
		return fmt.Errorf("blob %s: %w (the blob with this hash has %d bytes)", d, storage.ErrNotFound, info.Size)
	}
	return nil
}

// putResult interprets a Put for a client: a write that lost to a newer namespace tombstone
// (ErrStale) is not an error for the client, it simply created nothing.
func putResult(res storage.PutResult, err error) (storage.PutResult, error) {
	if errors.Is(err, storage.ErrStale) {
		return storage.PutResult{}, nil
	}
	return res, err
}

// checkExisting verifies that a blob the store already held (Put created nothing) is the one
// the digest names.
func checkExisting(res storage.PutResult, d digest) error {
	if res.Info.Key.Name != "" && res.Info.Size != d.size {
		return fmt.Errorf("%w: a blob with hash %s is stored with %d bytes, not %d", errInvalidArgument, d.hex(), res.Info.Size, d.size)
	}
	return nil
}

// putIdentity stores an uncompressed in-memory blob after checking it against its digest.
func (s *Server) putIdentity(ctx context.Context, namespace string, d digest, data []byte) (created bool, err error) {
	if int64(len(data)) != d.size {
		return false, fmt.Errorf("%w: blob %s: data has %d bytes, the digest says %d", errInvalidArgument, d, len(data), d.size)
	}
	if sum := d.fn.sum(data); sum != d.hash {
		return false, fmt.Errorf("%w: blob %s: data hashes to %x", errInvalidArgument, d, sum)
	}
	if d.isEmpty() {
		return false, nil
	}
	res, err := putResult(s.local.Put(ctx, casKey(s.tenant(), namespace, d), bytes.NewReader(data), s.putOptions(d)))
	if err != nil {
		return false, fmt.Errorf("store blob %s: %w", d, err)
	}
	if !res.Created {
		return false, checkExisting(res, d)
	}
	return true, nil
}

// putZstd decodes a zstd payload while streaming it into the store. Decoding stops one byte
// past the declared size (the bomb guard). When the store already held the blob and so read
// nothing (or not everything), the rest is decoded here, so bad data is never acknowledged.
func (s *Server) putZstd(ctx context.Context, namespace string, d digest, compressed []byte) (created bool, err error) {
	dec, err := s.codecs.decoder(bytes.NewReader(compressed))
	if err != nil {
		return false, err
	}
	defer s.codecs.putDecoder(dec)
	body := &hashingReader{r: &trackingReader{r: &boundedReader{r: dec, left: d.size}}, h: d.fn.newHash()}
	var res storage.PutResult
	if !d.isEmpty() {
		res, err = putResult(s.local.Put(ctx, casKey(s.tenant(), namespace, d), verifyBody(d, body), s.putOptions(d)))
		if err != nil {
			if derr := dataError(body.tracked().err); derr != nil {
				return false, fmt.Errorf("blob %s: %w", d, derr)
			}
			return false, fmt.Errorf("store blob %s: %w", d, err)
		}
		if res.Created {
			return true, nil
		}
	}
	if _, err := io.Copy(io.Discard, body); err != nil {
		return false, fmt.Errorf("blob %s: %w", d, dataError(err))
	}
	if body.n != d.size || !bytes.Equal(body.h.Sum(nil), d.hash[:]) {
		return false, fmt.Errorf("%w: blob %s: decompressed data has %d bytes and hashes to %x", errInvalidArgument, d, body.n, body.h.Sum(nil))
	}
	return false, checkExisting(res, d)
}

// putOptions makes the store verify size and hash before it commits. The store knows only
// SHA-256: a body of another digest function must come through verifyBody.
func (s *Server) putOptions(d digest) storage.PutOptions {
	opts := storage.PutOptions{ContentType: contentType, Size: d.size}
	if d.fn == fnSHA256 {
		h := d.hash
		opts.ExpectedSHA256 = &h
	}
	return opts
}

// verifyBody returns body as the store should read it for digest d. A SHA-256 body is
// returned as it is (the store verifies it, putOptions); any other is hashed on its way in
// and its end reported as an error wrapping errInvalidArgument instead of io.EOF when its
// hash or size is not d's, so the store fails the Put and keeps nothing. A ChunkReader stays
// one, its chunks passed on without a copy.
func verifyBody(d digest, body io.Reader) io.Reader {
	if d.fn == fnSHA256 {
		return body
	}
	v := &verifiedBody{r: body, d: d, h: d.fn.newHash()}
	if c, ok := body.(storage.ChunkReader); ok {
		return &verifiedChunks{verifiedBody: v, chunks: c}
	}
	return v
}

// verifiedBody is verifyBody's reader.
type verifiedBody struct {
	r io.Reader
	d digest
	h hash.Hash
	n int64
}

func (v *verifiedBody) Read(p []byte) (int, error) {
	n, err := v.r.Read(p)
	return n, v.saw(p[:n], err)
}

// saw hashes data and judges the end of the body.
func (v *verifiedBody) saw(data []byte, err error) error {
	v.h.Write(data)
	v.n += int64(len(data))
	if err != io.EOF {
		return err
	}
	var sum [hashSize]byte
	v.h.Sum(sum[:0])
	if v.n != v.d.size || sum != v.d.hash {
		return fmt.Errorf("%w: blob %s: the data has %d bytes and its %s is %x", errInvalidArgument, v.d, v.n, v.d.fn, sum)
	}
	return io.EOF
}

// verifiedChunks is verifyBody's reader for a storage.ChunkReader.
type verifiedChunks struct {
	*verifiedBody
	chunks storage.ChunkReader
}

var _ storage.ChunkReader = (*verifiedChunks)(nil)

func (v *verifiedChunks) NextChunk() ([]byte, error) {
	p, err := v.chunks.NextChunk()
	return p, v.saw(p, err)
}

// hashingReader hashes and counts what passes through it.
type hashingReader struct {
	r io.Reader
	h hash.Hash
	n int64
}

func (h *hashingReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	h.n += int64(n)
	return n, err
}

func (h *hashingReader) tracked() *trackingReader { return h.r.(*trackingReader) }

// findMissing returns the hashes among ds that the store does not hold (the ActionCache's
// completeness check; FindMissingBlobs uses missingMask directly).
func (s *Server) findMissing(ctx context.Context, namespace string, ds []digest) (map[[hashSize]byte]bool, error) {
	mask := make([]bool, len(ds))
	if err := s.missingMask(ctx, namespace, ds, nil, mask); err != nil {
		return nil, err
	}
	missing := map[[hashSize]byte]bool{}
	for i, d := range ds {
		if mask[i] {
			missing[d.hash] = true
		}
	}
	return missing, nil
}

// findScratch is missingMask's reusable key list: a FindMissingBlobs of thousands of digests
// builds its keys without allocating them anew.
type findScratch struct {
	keys []storage.Key
	pos  []int // keys[i] is the blob of ds[pos[i]]
}

var findScratches = sync.Pool{New: func() any { return new(findScratch) }}

// maxPooledKeys bounds what a pooled scratch keeps: an unusually large request does not pin
// its key list.
const maxPooledKeys = 16384

// missingMask sets missing[i] for every ds[i] the store does not hold, and refreshes the
// others (storage.Refresher): FindMissingBlobs and the ActionCache's completeness check both
// vouch for what they report present. The empty blob is always present. names, when not nil,
// holds each digest's storage name (for SHA-256, the hash string as received, already
// validated: 64 lowercase hex digits, the canonical form), which names the key without
// encoding the hash again. Store.FindMissing answers in the order given, so its answer is
// matched back to positions in one walk.
func (s *Server) missingMask(ctx context.Context, namespace string, ds []digest, names []string, missing []bool) error {
	sc := findScratches.Get().(*findScratch)
	defer func() {
		if cap(sc.keys) <= maxPooledKeys {
			clear(sc.keys) // drop the request's strings
			sc.keys, sc.pos = sc.keys[:0], sc.pos[:0]
			findScratches.Put(sc)
		}
	}()
	tenant := s.tenant()
	for i, d := range ds {
		if d.isEmpty() {
			continue
		}
		name := ""
		if names != nil {
			name = names[i]
		} else {
			name = d.storageName()
		}
		sc.keys = append(sc.keys, storage.Key{Tenant: tenant, Namespace: namespace, Kind: storage.KindCAS, Name: name})
		sc.pos = append(sc.pos, i)
	}
	keys, pos := sc.keys, sc.pos
	refresher, _ := s.store.(storage.Refresher)
	for len(keys) > 0 {
		n := min(len(keys), findMissingChunk)
		absent, err := s.store.FindMissing(ctx, keys[:n])
		if err != nil {
			return fmt.Errorf("find missing blobs: %w", err)
		}
		j, present := 0, 0
		for i := 0; i < n; i++ {
			if j < len(absent) && keys[i].Name == absent[j].Name {
				missing[pos[i]] = true
				j++
				continue
			}
			// Compact the present keys in place (each moves down or stays): the chunk's
			// keys are not needed after this walk.
			keys[present] = keys[i]
			present++
		}
		if j < len(absent) {
			return fmt.Errorf("find missing blobs: store returned an unexpected key %s", absent[j])
		}
		if refresher != nil && present > 0 {
			// The client is told these exist and may download them minutes later (builds
			// without the bytes): eviction and retention must treat them as just read.
			refresher.Refresh(keys[:present])
		}
		keys, pos = keys[n:], pos[n:]
	}
	return nil
}
