package local

import (
	"bytes"
	"hash/maphash"
	"sync"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
)

// existenceIndex answers FindMissing from memory: the set of every stored object (evicted
// stubs and damaged manifests are absent), so an existence check costs a hash and a map probe
// instead of a Pebble Get.
//
// Representation. Objects are grouped by tenant/namespace (so a namespace deletion drops its
// group in O(1), damaged manifests included); within a group an object is the 128-bit keyed
// hash of "kind\0name" (two maphash sums with independent per-process random seeds). The hash
// is the authority for "present": a false "present" would make Bazel skip an upload it later
// misses, and for one lookup among a million stored names in a group its probability is about
// 2^-108 (n/2^128), unreachable for an adversary who never sees the seeds. A group costs 16
// bytes a slot in a Go swiss map at 7/16–7/8 load: 19–39 bytes per object (~30 MiB for a
// million objects), plus the group's name. The memory controller sees it in the resident set
// it measures; it is not trimmed under pressure (dropping it would only slow FindMissing).
//
// Consistency. Every manifest change the store makes reaches the manifest cache after its
// batch committed, under the key's lock (update, invalidate) or the namespace's exclusive lock
// (invalidateNamespace), and the cache forwards each one here, so the index is exactly as
// fresh as the cache: set after a commit whose new state is known; forget after a failed
// commit whose outcome is unknown, which marks the key unknown (answered from Pebble until
// its next change) because a stale "present" is never safe; dropNamespace after a clean.
//
// Build. At Open the index is empty and not ready, and FindMissing reads Pebble. The first
// anti-entropy digest walk (rebuildDigests, in the background) also fills a fresh index;
// begin starts recording changes before that walk's iterator is opened, so every change
// committed after the walk's snapshot is recorded, and finish replays them in order onto the
// walk's result: each change records the key's state after its commit, so replaying one the
// walk already saw is harmless. Later digest rebuilds leave the ready index alone: its changes
// are per key, so a damaged manifest (whose digest contribution is unknown) does not disturb it.
type existenceIndex struct {
	seeds [2]maphash.Seed

	mu         sync.RWMutex
	ready      bool
	namespaces map[string]map[existKey]struct{} // "tenant\0namespace" → objects' hashes
	unknown    map[string]struct{}              // encoded keys whose state is unknown
	objects    int

	recording bool
	changes   []existChange // while the first build walks
	gen       uint64        // bumped by reset: a build begun before it is discarded
}

// existKey is the 128-bit hash of an object's "kind\0name" within its namespace.
type existKey [2]uint64

type existChange struct {
	ns   string // "tenant\0namespace"
	ek   string // the encoded manifest key ("" for a namespace deletion's removals)
	op   existOp
	hash existKey
}

type existOp uint8

const (
	existAbsent existOp = iota
	existPresent
	existUnknown
)

func (x *existenceIndex) init() {
	x.seeds = [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}
	x.namespaces = make(map[string]map[existKey]struct{})
	x.unknown = make(map[string]struct{})
}

// splitEncoded cuts an encoded manifest key (prefix, tenant\0namespace\0kind\0name) into its
// namespace part and its kind\0name part; ok is false for a malformed key.
func splitEncoded(ek []byte) (ns, rest []byte, ok bool) {
	if len(ek) < 1 {
		return nil, nil, false
	}
	b := ek[1:]
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, nil, false
	}
	j := bytes.IndexByte(b[i+1:], 0)
	if j < 0 {
		return nil, nil, false
	}
	return b[:i+1+j], b[i+2+j:], true
}

func (x *existenceIndex) hash(rest []byte) existKey {
	return existKey{maphash.Bytes(x.seeds[0], rest), maphash.Bytes(x.seeds[1], rest)}
}

// set records that the key encoded as ek is now stored (present) or not.
func (x *existenceIndex) set(ek []byte, present bool) {
	op := existAbsent
	if present {
		op = existPresent
	}
	x.change(ek, op)
}

// forget records that the outcome of a change of ek is unknown.
func (x *existenceIndex) forget(ek []byte) { x.change(ek, existUnknown) }

func (x *existenceIndex) change(ek []byte, op existOp) {
	ns, rest, ok := splitEncoded(ek)
	if !ok {
		return
	}
	h := x.hash(rest)
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.recording {
		x.changes = append(x.changes, existChange{ns: string(ns), ek: string(ek), op: op, hash: h})
	}
	if x.ready {
		x.applyLocked(x.namespaces, &x.objects, string(ek), string(ns), op, h)
	}
}

// applyLocked applies one change to namespaces (counting objects in n).
func (x *existenceIndex) applyLocked(namespaces map[string]map[existKey]struct{}, n *int, ek, ns string, op existOp, h existKey) {
	if op == existUnknown {
		x.unknown[ek] = struct{}{}
	} else if len(x.unknown) > 0 {
		delete(x.unknown, ek)
	}
	set := namespaces[ns]
	if op != existPresent {
		if _, ok := set[h]; ok {
			delete(set, h)
			*n--
			if len(set) == 0 {
				delete(namespaces, ns)
			}
		}
		return
	}
	if set == nil {
		set = make(map[existKey]struct{})
		namespaces[ns] = set
	}
	if _, ok := set[h]; !ok {
		set[h] = struct{}{}
		*n++
	}
}

// nsHash is the hash an object of a namespace is indexed under (ek its encoded key).
func (x *existenceIndex) nsHash(ek []byte) (existKey, bool) {
	_, rest, ok := splitEncoded(ek)
	if !ok {
		return existKey{}, false
	}
	return x.hash(rest), true
}

// removed records that a namespace deletion removed the objects hashed as hashes (nsHash)
// from tenant/namespace.
func (x *existenceIndex) removed(tenant, namespace string, hashes []existKey) {
	ns := tenant + "\x00" + namespace
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, h := range hashes {
		if x.recording {
			x.changes = append(x.changes, existChange{ns: ns, op: existAbsent, hash: h})
		}
		if x.ready {
			x.applyLocked(x.namespaces, &x.objects, "", ns, existAbsent, h)
		}
	}
}

// reset forgets everything after a change whose outcome is unknown for many keys (a failed
// namespace deletion): FindMissing reads Pebble until the next digest walk rebuilds the
// index, and a build in progress is discarded.
func (x *existenceIndex) reset() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.ready, x.gen = false, x.gen+1
	x.namespaces = make(map[string]map[existKey]struct{})
	x.unknown = make(map[string]struct{})
	x.objects = 0
}

// isReady reports whether the first build completed.
func (x *existenceIndex) isReady() bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.ready
}

// existBuild is a fresh index filled by a walk over the manifests.
type existBuild struct {
	x          *existenceIndex
	gen        uint64
	namespaces map[string]map[existKey]struct{}
	objects    int
	lastNS     []byte
	lastSet    map[existKey]struct{}
}

// begin starts recording changes for a build; call it before the walk's iterator is opened.
func (x *existenceIndex) begin() *existBuild {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.recording = true
	x.changes = nil
	return &existBuild{x: x, gen: x.gen, namespaces: make(map[string]map[existKey]struct{})}
}

// add records one walked manifest (ek its encoded key).
func (b *existBuild) add(ek []byte, m *meta.Manifest) {
	if m.Evicted {
		return
	}
	ns, rest, ok := splitEncoded(ek)
	if !ok {
		return
	}
	// The walk is in key order, so a namespace's objects come together.
	if b.lastSet == nil || !bytes.Equal(ns, b.lastNS) {
		b.lastSet = b.namespaces[string(ns)]
		if b.lastSet == nil {
			b.lastSet = make(map[existKey]struct{})
			b.namespaces[string(ns)] = b.lastSet
		}
		b.lastNS = append(b.lastNS[:0], ns...)
	}
	h := b.x.hash(rest)
	if _, ok := b.lastSet[h]; !ok {
		b.lastSet[h] = struct{}{}
		b.objects++
	}
}

// finish replays the changes recorded since begin and makes the index ready; with a failed
// walk (ok false) it only stops recording.
func (b *existBuild) finish(ok bool) {
	x := b.x
	x.mu.Lock()
	defer x.mu.Unlock()
	changes := x.changes
	x.recording, x.changes = false, nil
	if !ok || b.gen != x.gen {
		return
	}
	for _, c := range changes {
		x.applyLocked(b.namespaces, &b.objects, c.ek, c.ns, c.op, c.hash)
	}
	x.namespaces, x.objects, x.ready = b.namespaces, b.objects, true
}

// stats returns the number of objects indexed and whether the index is ready.
func (x *existenceIndex) stats() (int, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.objects, x.ready
}

// existLookupChunk bounds the keys looked up under one read lock, so a FindMissing of 10,000
// keys never holds a writer off for more than a few microseconds.
const existLookupChunk = 256

// findMissing appends to missing the keys (already validated) the index does not hold and
// returns the positions of those whose state it does not know (to be asked of Pebble); ok is
// false when the index is not ready yet.
func (x *existenceIndex) findMissing(keys []storage.Key, missing []storage.Key) (_ []storage.Key, unknown []int, ok bool) {
	var buf [4 + 4*storage.MaxIdentifierBytes]byte
	for start := 0; start < len(keys); start += existLookupChunk {
		chunk := keys[start:min(start+existLookupChunk, len(keys))]
		x.mu.RLock()
		if !x.ready {
			x.mu.RUnlock()
			return missing, nil, false
		}
		var (
			lastTenant, lastNamespace string
			set                       map[existKey]struct{}
			haveSet                   bool
		)
		for i, k := range chunk {
			if !haveSet || k.Tenant != lastTenant || k.Namespace != lastNamespace {
				ns := append(append(append(buf[:0], k.Tenant...), 0), k.Namespace...)
				set, haveSet = x.namespaces[string(ns)], true
				lastTenant, lastNamespace = k.Tenant, k.Namespace
			}
			rest := append(append(append(buf[:0], k.Kind...), 0), k.Name...)
			if _, ok := set[x.hash(rest)]; ok {
				continue
			}
			if len(x.unknown) > 0 {
				if _, ok := x.unknown[string(meta.AppendManifestKey(buf[:0], k))]; ok {
					unknown = append(unknown, start+i)
					continue
				}
			}
			missing = append(missing, k)
		}
		x.mu.RUnlock()
	}
	return missing, unknown, true
}
