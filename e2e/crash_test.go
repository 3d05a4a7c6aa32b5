package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Crash test shape: enough concurrent writers that many requests are mid-flight when the
// node is killed, and a bounded upload phase.
const (
	crashWriters        = 32
	crashAcksBeforeKill = 150              // kill once this many uploads were acknowledged…
	crashMaxUploadPhase = 20 * time.Second // …or after this long, whichever comes first
)

// crashUpload is one upload attempt of the crash test.
type crashUpload struct {
	kind   string
	url    string // where to read it back
	sha256 [32]byte
	size   int
	values []string // keyvalue entries (compared as a document, not as bytes)
}

// TestCrashRecovery runs concurrent uploaders of every blob protocol against a node, SIGKILLs
// it mid-flight, restarts it on the same data directory and checks that every upload whose
// success response arrived reads back byte-identical, and that uploads cut off by the crash
// are either absent or complete (never torn).
func TestCrashRecovery(t *testing.T) {
	t.Parallel()
	node := StartNode(t, NodeOptions{})
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("KURA_E2E_CRASH_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("KURA_E2E_CRASH_SEED: %v", err)
		}
		seed = v
	}
	t.Logf("crash test seed %d (replay with KURA_E2E_CRASH_SEED=%d)", seed, seed)

	var (
		mu       sync.Mutex
		acked    []crashUpload
		inFlight = map[int]crashUpload{} // by attempt id
		nextID   atomic.Int64
		killed   atomic.Bool
		ackCount atomic.Int64
		failures []string
		wg       sync.WaitGroup
	)
	stop := make(chan struct{})
	enough := make(chan struct{})
	var enoughOnce sync.Once

	for w := range crashWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for {
				select {
				case <-stop:
					return
				default:
				}
				id := int(nextID.Add(1))
				up, req := newCrashUpload(node.URL(), rng, seed, id)
				mu.Lock()
				inFlight[id] = up
				mu.Unlock()
				resp, err := tryDo(req)
				ok := err == nil && resp.Status == crashSuccess[up.kind]
				mu.Lock()
				if ok {
					delete(inFlight, id)
					acked = append(acked, up)
				} else if !killed.Load() {
					// Before the kill every upload must succeed; a failure is not a cut-off.
					delete(inFlight, id)
					failures = append(failures, fmt.Sprintf("%s upload %d: %v %v", up.kind, id, err, resp))
				}
				mu.Unlock()
				if ok && ackCount.Add(1) >= crashAcksBeforeKill {
					enoughOnce.Do(func() { close(enough) })
				}
				if !ok {
					return // the node is gone (or broken); stop this writer
				}
			}
		}()
	}

	start := time.Now()
	select {
	case <-enough:
	case <-time.After(crashMaxUploadPhase):
	}
	mu.Lock()
	inFlightAtKill := len(inFlight)
	killed.Store(true)
	mu.Unlock()
	node.Kill()
	close(stop)
	wg.Wait()
	uploadPhase := time.Since(start)

	mu.Lock()
	defer mu.Unlock()
	for i, f := range failures {
		if i == 10 {
			t.Errorf("… and %d more failed uploads before the kill", len(failures)-i)
			break
		}
		t.Errorf("before the kill: %s", f)
	}
	figure(t, "SIGKILL after %s of uploads: %d acknowledged, %d in flight at the kill, %d cut off",
		uploadPhase.Round(time.Millisecond), len(acked), inFlightAtKill, len(inFlight))
	if len(acked) == 0 {
		t.Fatal("no upload was acknowledged before the kill")
	}
	if inFlightAtKill == 0 {
		t.Fatal("no upload was in flight at SIGKILL; the crash did not interrupt any write")
	}

	recovery := node.Restart()
	intact := 0
	for _, up := range acked {
		if found, problem := readCrashUpload(up); !found || problem != "" {
			t.Errorf("acknowledged %s upload lost or damaged: found=%v %s", up.kind, found, problem)
			continue
		}
		intact++
	}
	present, absent, torn := 0, 0, 0
	for _, up := range inFlight {
		found, problem := readCrashUpload(up)
		switch {
		case problem != "":
			torn++
			t.Errorf("cut-off %s upload is torn: %s", up.kind, problem)
		case found:
			present++
		default:
			absent++
		}
	}
	byKind := map[string]int{}
	for _, up := range acked {
		byKind[up.kind]++
	}
	figure(t, "restart after SIGKILL ready in %s", recovery)
	figure(t, "after restart: acknowledged %d, found intact %d (by kind %v); cut off %d: %d complete, %d absent, %d torn",
		len(acked), intact, byKind, len(inFlight), present, absent, torn)
}

// crashSuccess is each protocol's success status for a write.
var crashSuccess = map[string]int{
	"xcode": 204, "gradle": 201, "nx": 200, "metro": 200, "keyvalue": 204, "bazel": 200,
}

var crashKinds = []string{"xcode", "gradle", "nx", "metro", "keyvalue", "bazel"}

// newCrashUpload builds a random upload: 1 KiB, 64 KiB or 1-4 MiB of random bytes (keyvalue
// documents stay under the 1 MiB keyvalue limit) for one of the protocols.
func newCrashUpload(base string, rng *rand.Rand, seed uint64, id int) (crashUpload, request) {
	kind := crashKinds[rng.IntN(len(crashKinds))]
	var size int
	switch r := rng.IntN(100); {
	case r < 40:
		size = 1 << 10
	case r < 75:
		size = 64 << 10
	default:
		size = 1<<20 + rng.IntN(3<<20+1)
	}
	body := make([]byte, size)
	var chachaSeed [32]byte
	binary.LittleEndian.PutUint64(chachaSeed[:], seed)
	binary.LittleEndian.PutUint64(chachaSeed[8:], uint64(id))
	_, _ = rand.NewChaCha8(chachaSeed).Read(body)
	name := fmt.Sprintf("%016x%016x", seed, id)

	up := crashUpload{kind: kind, size: size, sha256: sha256.Sum256(body)}
	req := request{Method: "PUT", Body: bytes.NewReader(body)}
	switch kind {
	case "xcode":
		up.url = base + "/api/cache/cas/crash-" + name + "?tenant_id=crash&namespace_id=xcode"
		req.Method, req.URL = "POST", up.url
	case "gradle":
		up.url = base + "/api/cache/gradle/crash/gradle/" + name
		req.URL = up.url
	case "nx":
		// Nx hashes are decimal u64 strings.
		up.url = base + "/v1/cache/" + strconv.FormatUint(binary.BigEndian.Uint64(up.sha256[:8]), 10)
		req.URL = up.url
		req.Header = map[string]string{"Content-Type": "application/octet-stream"}
	case "metro":
		up.url = base + "/api/metro/cache/" + name
		req.URL = up.url
		req.Body = io.MultiReader(req.Body) // chunked, as Metro sends it
	case "keyvalue":
		// Values are hex text: at most 64 KiB raw → 128 KiB of JSON, under the 1 MiB limit.
		raw := body[:min(size, 64<<10)]
		up.values = []string{hex.EncodeToString(raw), name}
		doc, _ := json.Marshal(map[string]any{"cas_id": "crash-" + name, "entries": []map[string]string{{"value": up.values[0]}, {"value": up.values[1]}}})
		up.url = base + "/api/cache/keyvalue/crash-" + name + "?tenant_id=crash&namespace_id=kv"
		req.URL = base + "/api/cache/keyvalue?tenant_id=crash&namespace_id=kv"
		req.Body = bytes.NewReader(doc)
		req.Header = map[string]string{"Content-Type": "application/json"}
	case "bazel":
		up.url = base + "/cas/" + hex.EncodeToString(up.sha256[:])
		req.URL = up.url
	}
	return up, req
}

// readCrashUpload reads an upload back: found is false on a 404; problem describes anything
// else that is wrong (an error status, other bytes), "" when the object is intact.
func readCrashUpload(up crashUpload) (found bool, problem string) {
	got, err := tryDo(request{Method: "GET", URL: up.url})
	if err != nil {
		return false, err.Error()
	}
	switch got.Status {
	case http.StatusOK:
	case http.StatusNotFound:
		return false, ""
	default:
		return false, fmt.Sprintf("GET %s: %s", up.url, got)
	}
	if up.kind == "keyvalue" {
		var kv struct {
			Entries []struct {
				Value string `json:"value"`
			} `json:"entries"`
		}
		if err := json.Unmarshal(got.Body, &kv); err != nil {
			return true, fmt.Sprintf("keyvalue document is not JSON: %v", err)
		}
		var values []string
		for _, e := range kv.Entries {
			values = append(values, e.Value)
		}
		if !reflect.DeepEqual(values, up.values) {
			return true, "keyvalue entries differ"
		}
		return true, ""
	}
	if len(got.Body) != up.size || sha256.Sum256(got.Body) != up.sha256 {
		return true, fmt.Sprintf("GET %s: %d bytes with another digest, want %d bytes", up.url, len(got.Body), up.size)
	}
	return true, ""
}
