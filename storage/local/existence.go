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

	mu      sync.RWMutex
	ready   bool
	sets    existSets
	unknown map[string]struct{} // encoded keys whose state is unknown

	recording bool
	changes   []existChange // while the first build walks
	gen       uint64        // bumped by reset: a build begun before it is discarded
}

// existSets is what the index knows per namespace ("tenant\0namespace"): the stored objects
// (FindMissing's answer) and, for the writers' first-writer check (absent), the evicted stubs,
// so that a name in neither has no manifest at all. stubs is nil once more than
// maxExistStubs were seen: the writers then ask Pebble, as they did before the index.
type existSets struct {
	live    map[string]map[existKey]struct{}
	stubs   map[string]map[existKey]struct{}
	objects int
	nStubs  int
}

// maxExistStubs bounds the evicted stubs the index remembers (16 bytes a slot, some 30 MiB at
// the bound): stubs accumulate with everything ever evicted, and only spare the writers a
// Pebble get, so past the bound the index stops answering "no manifest" instead of growing.
const maxExistStubs = 1 << 20

func newExistSets() existSets {
	return existSets{live: make(map[string]map[existKey]struct{}), stubs: make(map[string]map[existKey]struct{})}
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
	existAbsent  existOp = iota // no manifest
	existPresent                // a stored object
	existStub                   // an evicted stub
	existUnknown                // a change of unknown outcome
)

func (x *existenceIndex) init() {
	x.seeds = [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}
	x.sets = newExistSets()
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

// update records the manifest the key encoded as ek now has (after its commit).
func (x *existenceIndex) update(ek []byte, m *meta.Manifest) {
	op := existPresent
	if m.Evicted {
		op = existStub
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
		x.applyLocked(&x.sets, string(ek), string(ns), op, h)
	}
}

// applyLocked applies one change to sets (the index's or a build's).
func (x *existenceIndex) applyLocked(sets *existSets, ek, ns string, op existOp, h existKey) {
	if op == existUnknown {
		x.unknown[ek] = struct{}{}
	} else if len(x.unknown) > 0 && ek != "" {
		delete(x.unknown, ek)
	}
	sets.apply(ns, op, h)
}

// apply makes h, in namespace ns, the object, the stub or the nothing op says.
func (sets *existSets) apply(ns string, op existOp, h existKey) {
	if op == existPresent {
		sets.objects += addExist(sets.live, ns, h)
	} else {
		sets.objects -= removeExist(sets.live, ns, h)
	}
	if sets.stubs == nil {
		return
	}
	if op == existStub {
		sets.nStubs += addExist(sets.stubs, ns, h)
		if sets.nStubs > maxExistStubs {
			sets.stubs, sets.nStubs = nil, 0
		}
	} else {
		sets.nStubs -= removeExist(sets.stubs, ns, h)
	}
}

// addExist adds h to namespace ns of m and returns how many entries it added (0 or 1).
func addExist(m map[string]map[existKey]struct{}, ns string, h existKey) int {
	set := m[ns]
	if set == nil {
		set = make(map[existKey]struct{})
		m[ns] = set
	}
	if _, ok := set[h]; ok {
		return 0
	}
	set[h] = struct{}{}
	return 1
}

// removeExist removes h from namespace ns of m and returns how many entries it removed.
func removeExist(m map[string]map[existKey]struct{}, ns string, h existKey) int {
	set, ok := m[ns]
	if !ok {
		return 0
	}
	if _, ok := set[h]; !ok {
		return 0
	}
	delete(set, h)
	if len(set) == 0 {
		delete(m, ns)
	}
	return 1
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
			x.applyLocked(&x.sets, "", ns, existAbsent, h)
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
	x.sets = newExistSets()
	x.unknown = make(map[string]struct{})
}

// isReady reports whether the first build completed.
func (x *existenceIndex) isReady() bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.ready
}

// existBuild is a fresh index filled by a walk over the manifests.
type existBuild struct {
	x       *existenceIndex
	gen     uint64
	sets    existSets
	unknown []string // encoded keys of manifests the walk could not decode
	lastNS  []byte
	lastSet map[existKey]struct{}
}

// begin starts recording changes for a build; call it before the walk's iterator is opened.
func (x *existenceIndex) begin() *existBuild {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.recording = true
	x.changes = nil
	return &existBuild{x: x, gen: x.gen, sets: newExistSets()}
}

// add records one walked manifest (ek its encoded key); m is nil for one that could not be
// decoded, whose state is then unknown.
func (b *existBuild) add(ek []byte, m *meta.Manifest) {
	if m == nil {
		b.unknown = append(b.unknown, string(ek))
		return
	}
	ns, rest, ok := splitEncoded(ek)
	if !ok {
		return
	}
	op := existPresent
	if m.Evicted {
		op = existStub
	}
	h := b.x.hash(rest)
	if op == existStub {
		b.sets.apply(string(ns), op, h)
		return
	}
	// The walk is in key order, so a namespace's objects come together: the set is looked up
	// once per run instead of once per object.
	if b.lastSet == nil || !bytes.Equal(ns, b.lastNS) {
		b.lastSet = b.sets.live[string(ns)]
		if b.lastSet == nil {
			b.lastSet = make(map[existKey]struct{})
			b.sets.live[string(ns)] = b.lastSet
		}
		b.lastNS = append(b.lastNS[:0], ns...)
	}
	if _, ok := b.lastSet[h]; !ok {
		b.lastSet[h] = struct{}{}
		b.sets.objects++
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
	for _, ek := range b.unknown {
		x.unknown[ek] = struct{}{}
	}
	for _, c := range changes {
		x.applyLocked(&b.sets, c.ek, c.ns, c.op, c.hash)
	}
	x.sets, x.ready = b.sets, true
}

// stats returns the number of objects indexed and whether the index is ready.
func (x *existenceIndex) stats() (int, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.sets.objects, x.ready
}

// absent reports whether the index knows that no manifest at all (neither an object nor an
// evicted stub) exists for the key encoded as ek: ready, the key's state known, the stubs
// tracked, and the name in neither set. false means "ask Pebble". It is exact while the
// caller holds the key's lock (every change reaches the index before its lock is released);
// without the lock it is as exact as a Pebble read at that moment, which is what the
// first-writer check's change counts (Store.keyGen) need.
func (x *existenceIndex) absent(ek []byte) bool {
	ns, rest, ok := splitEncoded(ek)
	if !ok {
		return false
	}
	h := x.hash(rest)
	x.mu.RLock()
	defer x.mu.RUnlock()
	if !x.ready || x.sets.stubs == nil {
		return false
	}
	if len(x.unknown) > 0 {
		if _, ok := x.unknown[string(ek)]; ok {
			return false
		}
	}
	if _, ok := x.sets.live[string(ns)][h]; ok {
		return false
	}
	_, stub := x.sets.stubs[string(ns)][h]
	return !stub
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
				set, haveSet = x.sets.live[string(ns)], true
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
