package reliability

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kuracache/kura/e2e/harness"
	"github.com/kuracache/kura/internal/testsupport/figures"
)

// crashUpload is one upload of the crash test: a CAS blob (Bazel HTTP cache) or a keyvalue
// document, and whether kura acknowledged it (2xx) before the kill.
type crashUpload struct {
	spec     blobSpec
	digest   string // CAS key; for keyvalue the cas_id
	keyvalue bool
	acked    bool
}

const (
	crashKVTenant    = "crash"
	crashKVNamespace = "kv"
)

// TestReliabilityCrashUnderLoad (item 1) kill -9s a node at a random moment of a burst of
// concurrent uploads of mixed sizes, restarts it on its data directory, and reads every
// upload back: each acknowledged one must be whole, each cut-off one whole or absent (404),
// never another body. Short mode: 3 bursts of 100 uploads up to 4 MiB; long mode: 20 bursts of
// 1,000 uploads from 1 KiB to 64 MiB.
func TestReliabilityCrashUnderLoad(t *testing.T) {
	iterations := figures.Pick(3, 20)
	uploads := figures.Pick(100, 1000)
	maxSize := figures.Pick[int64](4<<20, 64<<20)
	seed := itemSeed(t)
	rng := rand.New(rand.NewPCG(seed, 1))
	node := harness.StartNode(t, harness.NodeOptions{})
	client := node.Client(5 * time.Minute)
	defer client.CloseIdleConnections()

	var (
		all        []*crashUpload
		readyTimes []time.Duration
		corrupted  int // bodies served that are not what was written
		ackedTotal int
		readable   int // acknowledged uploads whole after the restart that followed them
		otherBad   int // answers that are neither the body nor 404
		inFlight   int
	)
	for it := range iterations {
		batch := make([]*crashUpload, uploads)
		for i := range batch {
			batch[i] = newCrashUpload(rng, seed, uint64(it*uploads+i), maxSize)
		}
		// The kill comes after a random share (10–90 %) of the burst has been acknowledged,
		// or after a random delay, whichever is first: either way many uploads are mid-flight.
		killAfterAcks := uploads/10 + rng.IntN(uploads*8/10)
		killAfterDelay := time.Duration(200+rng.IntN(figures.Pick(3000, 20000))) * time.Millisecond
		acks, rejected := runCrashBurst(t, node, client, batch, killAfterAcks, killAfterDelay)
		flight := 0
		for _, up := range batch {
			if !up.acked {
				flight++
			}
		}
		inFlight += flight
		t.Logf("burst %d: kill -9 after %d acknowledged uploads (target %d acks or %s), %d not acknowledged (%d rejected with an error status)",
			it+1, acks, killAfterAcks, killAfterDelay, flight, rejected)
		readyTimes = append(readyTimes, node.Restart())

		c, r, o := verifyCrashUploads(t, node, client, batch)
		corrupted += c
		otherBad += o
		for _, up := range batch {
			if up.acked {
				ackedTotal++
			}
		}
		readable += r
		all = append(all, batch...)
	}
	// After the last restart every acknowledged upload of every burst is still whole.
	c, _, o := verifyCrashUploads(t, node, client, all)
	corrupted += c
	otherBad += o

	figures.Check(t, 1, "corrupted bodies served", corrupted, 0)
	figures.Check(t, 1, "acknowledged uploads readable after restart", percentWhole(readable, ackedTotal), "100 %")
	figures.Check(t, 1, "reads answered other than the body or 404", otherBad, 0)
	figures.Report(t, 1, "time to ready after kill -9", readyTimeStats(readyTimes))
	figures.Report(t, 1, "uploads acknowledged / cut off by the kill",
		fmt.Sprintf("%d / %d of %d (%d bursts)", ackedTotal, inFlight, len(all), iterations))
	if ackedTotal == 0 || inFlight == 0 {
		t.Errorf("the kill must interrupt a burst: %d acknowledged, %d cut off", ackedTotal, inFlight)
	}
}

// newCrashUpload draws one upload: sizes are skewed the way build caches see them (most
// small, a few up to maxSize), and one in five is a keyvalue document instead of a blob.
func newCrashUpload(rng *rand.Rand, seed, id uint64, maxSize int64) *crashUpload {
	if rng.IntN(5) == 0 {
		spec := blobSpec{seed: seed, id: id, size: 1<<10 + rng.Int64N(31<<10)}
		return &crashUpload{spec: spec, digest: fmt.Sprintf("crash-%016x-%d", seed, id), keyvalue: true}
	}
	var size int64
	switch r := rng.IntN(100); {
	case r < 60:
		size = 1<<10 + rng.Int64N(63<<10) // 1–64 KiB
	case r < 90:
		size = 64<<10 + rng.Int64N(960<<10) // 64 KiB – 1 MiB
	case r < 98:
		size = 1<<20 + rng.Int64N(min(7<<20, maxSize-1<<20)) // 1–8 MiB
	default:
		size = min(8<<20, maxSize/2) + rng.Int64N(maxSize-min(8<<20, maxSize/2)+1) // up to maxSize
	}
	spec := blobSpec{seed: seed, id: id, size: size}
	return &crashUpload{spec: spec, digest: spec.digest()}
}

// kvDocument is the keyvalue document of a keyvalue upload (its one entry is the hex body).
func (u *crashUpload) kvDocument() []byte {
	doc, _ := json.Marshal(map[string]any{"cas_id": u.digest, "entries": []map[string]string{{"value": hex.EncodeToString(u.spec.bytes())}}})
	return doc
}

func crashKVQuery() string {
	return "?tenant_id=" + crashKVTenant + "&namespace_id=" + crashKVNamespace
}

// runCrashBurst starts every upload at once and kill -9s the node after killAfterAcks
// acknowledgements or killAfterDelay, whichever is first; it returns when every client has
// seen its answer or its broken connection.
func runCrashBurst(t *testing.T, node *harness.Node, client *http.Client, batch []*crashUpload, killAfterAcks int, killAfterDelay time.Duration) (acks, rejected int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var (
		mu       sync.Mutex
		ackCount atomic.Int64
		killNow  = make(chan struct{})
		once     sync.Once
		wg       sync.WaitGroup
		killed   atomic.Bool
		errs     []string
	)
	for _, up := range batch {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var status int
			var err error
			if up.keyvalue {
				doc := up.kvDocument()
				status, err = sendBody(ctx, client, http.MethodPut, node.URL()+"/api/cache/keyvalue"+crashKVQuery(),
					strings.NewReader(string(doc)), int64(len(doc)), "application/json")
			} else {
				status, err = putBazelCAS(ctx, client, node, up.spec, up.digest)
			}
			if err == nil && status >= 200 && status < 300 {
				// Marked only when the answer arrived: that is what a client can rely on.
				mu.Lock()
				up.acked = true
				mu.Unlock()
				if int(ackCount.Add(1)) >= killAfterAcks {
					once.Do(func() { close(killNow) })
				}
				return
			}
			if err == nil && !killed.Load() {
				mu.Lock()
				errs = append(errs, fmt.Sprintf("status %d", status))
				mu.Unlock()
			}
		}()
	}
	allDone := make(chan struct{})
	go func() { wg.Wait(); close(allDone) }()
	select {
	case <-killNow:
	case <-time.After(killAfterDelay):
	case <-allDone:
	}
	killed.Store(true)
	node.Kill()
	<-allDone
	for i, e := range errs {
		if i == 5 {
			break
		}
		t.Logf("an upload was refused before the kill: %s", e)
	}
	return int(ackCount.Load()), len(errs)
}

// verifyCrashUploads reads every upload of batch back: it returns how many bodies were served
// that differ from what was written, how many acknowledged uploads were whole, and how many
// answers were neither a body nor 404.
func verifyCrashUploads(t *testing.T, node *harness.Node, client *http.Client, batch []*crashUpload) (corrupted, readable, other int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var mu sync.Mutex
	work := make(chan *crashUpload)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for up := range work {
				whole, found, problem := readCrashUpload(ctx, node, client, up)
				mu.Lock()
				switch {
				case problem != "" && found:
					corrupted++
					t.Errorf("upload %s (%d bytes, acknowledged %v) served another body: %s", up.digest, up.spec.size, up.acked, problem)
				case problem != "":
					other++
					t.Errorf("upload %s (acknowledged %v): %s", up.digest, up.acked, problem)
				case up.acked && whole:
					readable++
				case up.acked:
					t.Errorf("acknowledged upload %s (%d bytes) is missing after the restart", up.digest, up.spec.size)
				}
				mu.Unlock()
			}
		}()
	}
	for _, up := range batch {
		work <- up
	}
	close(work)
	wg.Wait()
	return corrupted, readable, other
}

// readCrashUpload reads one upload: whole when the body equals what was written, found when
// kura served a body at all, problem when what it served (or answered) is wrong.
func readCrashUpload(ctx context.Context, node *harness.Node, client *http.Client, up *crashUpload) (whole, found bool, problem string) {
	if up.keyvalue {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, node.URL()+"/api/cache/keyvalue/"+up.digest+crashKVQuery(), nil)
		if err != nil {
			return false, false, err.Error()
		}
		resp, err := client.Do(req)
		if err != nil {
			return false, false, err.Error()
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		switch {
		case err != nil:
			return false, true, fmt.Sprintf("keyvalue body broke: %v", err)
		case resp.StatusCode == http.StatusNotFound:
			return false, false, ""
		case resp.StatusCode != http.StatusOK:
			return false, false, fmt.Sprintf("keyvalue GET: status %d %s", resp.StatusCode, body)
		}
		var doc struct {
			Entries []struct {
				Value string `json:"value"`
			} `json:"entries"`
		}
		if err := json.Unmarshal(body, &doc); err != nil {
			return false, true, fmt.Sprintf("keyvalue document is not JSON: %v", err)
		}
		if len(doc.Entries) != 1 || doc.Entries[0].Value != hex.EncodeToString(up.spec.bytes()) {
			return false, true, "keyvalue entries differ from the ones written"
		}
		return true, true, ""
	}
	s, err := getCompared(ctx, client, bazelCASURL(node, up.digest), up.spec)
	switch {
	case err != nil:
		return false, false, err.Error()
	case s.status == http.StatusNotFound:
		return false, false, ""
	case s.status != http.StatusOK:
		return false, false, fmt.Sprintf("GET: status %d", s.status)
	case !s.whole(up.spec.size):
		return false, true, fmt.Sprintf("%d of %d bytes received, %d differ, stream error %v", s.received, up.spec.size, s.badBytes, s.readErr)
	}
	return true, true, ""
}
