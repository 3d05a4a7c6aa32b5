package reliability

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kuracache/kura/e2e/harness"
	"github.com/kuracache/kura/internal/testsupport/figures"
)

// The on-disk record layout of storage/segment (format.go, docs/segments.md), as far as the
// bit-rot test needs it to find records in a stopped node's segment files:
// body | one CRC-32C per 64 KiB block | footer, the footer ending in its own length (u32 LE)
// and holding the body size (u64 LE at 12) and the body's SHA-256 (at 20).
const (
	segBlockSize       = 64 << 10
	segFooterMagic     = "KSEG"
	segFooterOverhead  = 4 + 1 + 3 + 4 + 8 + 32 + 4 + 4
	segWholeRecordRead = 128 << 10 // records up to this size are read with one pread (reader.go)
)

// segRecord is one record found in a segment file.
type segRecord struct {
	path                 string
	offset               int64 // first byte of the record in the file
	bodySize, footerSize int64
	sha256               string
}

func (r segRecord) tableSize() int64  { return (r.bodySize + segBlockSize - 1) / segBlockSize * 4 }
func (r segRecord) recordSize() int64 { return r.bodySize + r.tableSize() + r.footerSize }

// segmentRecords walks every segment file of a stopped node's data directory from its end,
// footer to footer. A cleanly stopped node's files hold only whole records, so anything that
// does not parse fails the test.
func segmentRecords(t *testing.T, dataDir string) []segRecord {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dataDir, "segments", "*.seg"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no segment files under %s (%v)", dataDir, err)
	}
	var out []segRecord
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for pos := int64(len(data)); pos > 0; {
			if pos < segFooterOverhead {
				t.Fatalf("%s: %d bytes before offset %d do not hold a footer", path, pos, pos)
			}
			flen := int64(binary.LittleEndian.Uint32(data[pos-4:]))
			if flen < segFooterOverhead || flen > pos {
				t.Fatalf("%s: footer length %d at offset %d", path, flen, pos-4)
			}
			f := data[pos-flen : pos]
			if string(f[:4]) != segFooterMagic {
				t.Fatalf("%s: no footer magic at offset %d", path, pos-flen)
			}
			r := segRecord{path: path, bodySize: int64(binary.LittleEndian.Uint64(f[12:])), footerSize: flen,
				sha256: hex.EncodeToString(f[20:52])}
			r.offset = pos - r.recordSize()
			if r.offset < 0 {
				t.Fatalf("%s: record of %d bytes ending at %d starts before the file", path, r.recordSize(), pos)
			}
			out = append(out, r)
			pos = r.offset
		}
	}
	return out
}

// rot is one damaged record: where its bytes were flipped.
type rot struct {
	rec    segRecord
	region string // body, crc table or footer
	at     []int64
}

// flipBytes XORs 1–3 bytes of region of rec with non-zero values, in place on disk.
func flipBytes(t *testing.T, rng *rand.Rand, rec segRecord, region string) rot {
	t.Helper()
	var lo, n int64
	switch region {
	case "body":
		lo, n = 0, rec.bodySize
	case "crc table":
		lo, n = rec.bodySize, rec.tableSize()
	default:
		lo, n = rec.bodySize+rec.tableSize(), rec.footerSize
	}
	f, err := os.OpenFile(rec.path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := rot{rec: rec, region: region}
	for range 1 + rng.IntN(3) {
		at := rec.offset + lo + rng.Int64N(n)
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, at); err != nil {
			t.Fatal(err)
		}
		b[0] ^= byte(1 + rng.IntN(255))
		if _, err := f.WriteAt(b, at); err != nil {
			t.Fatal(err)
		}
		r.at = append(r.at, at-rec.offset)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestReliabilityBitRot (item 4): a 2-node cluster stores objects on both nodes; one node is
// stopped and bytes are flipped in about 1 % of its records (body, CRC table or footer); after
// its restart every object is read from it. Each damaged record must be detected (logged as
// dropped), no wrong byte may reach a client, and each must end up stored whole on that node
// again, fetched from its peer (checked with the peer stopped, so nothing is read through).
func TestReliabilityBitRot(t *testing.T) {
	objects := figures.Pick(400, 5000)
	seed := itemSeed(t)
	rng := rand.New(rand.NewPCG(seed, 4))
	nodes := harness.StartCluster(t, 2, nil)
	writer, victim := nodes[0], nodes[1]
	waitUntilRingHas(t, nodes, 2)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	client := writer.Client(time.Minute)
	defer client.CloseIdleConnections()
	specs := map[string]blobSpec{}
	for i := range objects {
		var size int64
		switch r := rng.IntN(10); {
		case r < 5:
			size = 1<<10 + rng.Int64N(63<<10) // one block, read whole
		case r < 8:
			size = 64<<10 + rng.Int64N(60<<10) // two blocks, read whole
		default:
			size = segWholeRecordRead + rng.Int64N(384<<10) // streamed block by block
		}
		spec := blobSpec{seed: seed, id: uint64(i), size: size}
		digest := spec.digest()
		specs[digest] = spec
		// Half are written on each node, so the victim holds records it received both ways.
		status, err := putBazelCAS(ctx, client, nodes[i%2], spec, digest)
		if err != nil || status != http.StatusOK {
			t.Fatalf("PUT object %d: %d %v", i, status, err)
		}
	}
	for _, n := range nodes {
		harness.PollUntil(t, 60*time.Second, n.Name+"'s outbox drained", func() (bool, string) {
			d := scrapeSum(t, n, "kura_outbox_depth", nil)
			return d == 0, fmt.Sprintf("depth %v", d)
		})
	}
	victim.Stop()

	// Every object must be on the victim's disk exactly once before it is damaged.
	records := segmentRecords(t, victim.DataDir)
	bySum := map[string][]segRecord{}
	for _, r := range records {
		bySum[r.sha256] = append(bySum[r.sha256], r)
	}
	var whole, streamed []segRecord
	for digest := range specs {
		recs := bySum[digest]
		if len(recs) != 1 {
			t.Fatalf("object %s has %d records on %s, want 1 (not replicated?)", digest, len(recs), victim.Name)
		}
		if recs[0].recordSize() <= segWholeRecordRead {
			whole = append(whole, recs[0])
		} else {
			streamed = append(streamed, recs[0])
		}
	}
	sortRecords(whole)
	sortRecords(streamed)
	// About 1 %, at least 4, alternating between the two read paths and cycling through the
	// regions so that even the short mode damages each kind of byte.
	damage := max(4, objects/100)
	regions := []string{"body", "crc table", "body", "footer"}
	var rots []rot
	rotten := map[string]rot{}
	for i := range damage {
		pool := &whole
		if i%2 == 1 {
			pool = &streamed
		}
		if len(*pool) == 0 {
			t.Fatalf("no record left to damage")
		}
		j := rng.IntN(len(*pool))
		rec := (*pool)[j]
		*pool = append((*pool)[:j], (*pool)[j+1:]...)
		r := flipBytes(t, rng, rec, regions[i%len(regions)])
		rots = append(rots, r)
		rotten[rec.sha256] = r
		t.Logf("damaged %s (%d-byte body, record %d bytes) in its %s at record offsets %v", rec.sha256[:12], rec.bodySize, rec.recordSize(), r.region, r.at)
	}
	victim.Restart()
	waitUntilRingHas(t, nodes, 2)

	// Read every object from the damaged node.
	vclient := victim.Client(time.Minute)
	defer vclient.CloseIdleConnections()
	outcomes := map[string]int{}
	var badBytes int64
	var mu sync.Mutex
	forEachObject(ctx, t, specs, func(digest string, spec blobSpec) {
		s, err := getCompared(ctx, vclient, bazelCASURL(victim, digest), spec)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			t.Errorf("GET %s from %s: %v", digest, victim.Name, err)
			return
		}
		badBytes += s.badBytes
		_, damaged := rotten[digest]
		outcome := "whole"
		switch {
		case s.whole(spec.size):
		case s.status == http.StatusOK:
			outcome = "cut short"
		default:
			outcome = fmt.Sprintf("status %d", s.status)
		}
		if !damaged && outcome != "whole" {
			t.Errorf("undamaged object %s read from %s: %s (%d of %d bytes, %v)", digest, victim.Name, outcome, s.received, spec.size, s.readErr)
		}
		if r, ok := rotten[digest]; ok {
			outcomes[outcome]++
			t.Logf("first read of damaged %s (%s): %s, %d of %d bytes", digest[:12], r.region, outcome, s.received, spec.size)
		}
	})
	// A damaged record is detected when the node logs it dropped, naming the object.
	detected := 0
	for digest := range rotten {
		if logLinesWith(t, victim, "dropped corrupt record", digest) > 0 {
			detected++
		} else {
			t.Errorf("damaged record of %s (%s) was not reported as corrupt", digest, rotten[digest].region)
		}
	}

	// Each damaged object is stored on the victim again (read-through on the first read, or
	// the corrupt-record repair queue); with the peer gone, the victim serves it alone.
	harness.PollUntil(t, 60*time.Second, "damaged objects stored whole again", func() (bool, string) {
		missing := 0
		for digest := range rotten {
			s, err := getCompared(ctx, vclient, bazelCASURL(victim, digest), specs[digest])
			if err != nil || !s.whole(specs[digest].size) {
				missing++
			}
		}
		return missing == 0, fmt.Sprintf("%d of %d not yet whole", missing, len(rotten))
	})
	repairedMetric := scrapeSum(t, victim, "kura_corrupt_repairs_total", map[string]string{"result": "repaired"})
	readThroughHits := scrapeSum(t, victim, "kura_read_through_total", map[string]string{"result": "hit"})
	writer.Stop()
	repaired := 0
	for digest, r := range rotten {
		s, err := getCompared(ctx, vclient, bazelCASURL(victim, digest), specs[digest])
		switch {
		case err != nil:
			t.Errorf("GET repaired %s: %v", digest, err)
		case !s.whole(specs[digest].size):
			t.Errorf("damaged object %s (%s) is not whole on %s with its peer stopped: status %d, %d bytes", digest, r.region, victim.Name, s.status, s.received)
		default:
			badBytes += s.badBytes
			repaired++
		}
	}
	t.Logf("repairs on %s: %v by the corrupt-record queue, %v read-through hits", victim.Name, repairedMetric, readThroughHits)

	figures.Check(t, 4, "corrupt records detected on read", fmt.Sprintf("%d of %d", detected, len(rots)), fmt.Sprintf("%d of %d", len(rots), len(rots)))
	figures.Check(t, 4, "bad bytes served", badBytes, 0)
	figures.Check(t, 4, "records repaired from a peer", fmt.Sprintf("%d of %d", repaired, len(rots)), fmt.Sprintf("%d of %d", len(rots), len(rots)))
	// Damage the first served block can reveal is found before the answer starts, so the
	// read-through answers with the peer's copy; only damage further on can cut a transfer
	// short (after verified bytes only). A miss for an object the peer holds is a defect.
	figures.Check(t, 4, "damaged records answered as missing while the peer held them", len(rots)-outcomes["whole"]-outcomes["cut short"], 0)
	figures.Report(t, 4, "first reads of damaged records", fmt.Sprintf("%d served whole (peer copy), %d cut short mid-transfer", outcomes["whole"], outcomes["cut short"]))
	figures.Report(t, 4, "records damaged / stored", fmt.Sprintf("%d / %d (%.1f %%)", len(rots), len(records), float64(len(rots))*100/float64(len(records))))
}

func sortRecords(rs []segRecord) {
	sort.Slice(rs, func(i, j int) bool { return rs[i].sha256 < rs[j].sha256 })
}

// forEachObject calls read for every object, four at a time, in digest order.
func forEachObject(ctx context.Context, t *testing.T, specs map[string]blobSpec, read func(digest string, spec blobSpec)) {
	t.Helper()
	digests := make([]string, 0, len(specs))
	for d := range specs {
		digests = append(digests, d)
	}
	sort.Strings(digests)
	work := make(chan string)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range work {
				if ctx.Err() == nil {
					read(d, specs[d])
				}
			}
		}()
	}
	for _, d := range digests {
		work <- d
	}
	close(work)
	wg.Wait()
}

// waitUntilRingHas waits until every node counts want live members.
func waitUntilRingHas(t *testing.T, nodes []*harness.Node, want int) {
	t.Helper()
	for _, n := range nodes {
		harness.PollUntil(t, 60*time.Second, n.Name+" sees the whole cluster", func() (bool, string) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			up, err := n.Up(ctx)
			if err != nil {
				return false, err.Error()
			}
			return up.RingMembers == want, fmt.Sprintf("ring_members %d, members %s", up.RingMembers, strings.Join(up.RingNames, ","))
		})
	}
}
