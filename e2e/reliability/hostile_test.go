package reliability

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kuracache/kura/e2e/harness"
	"github.com/kuracache/kura/internal/testsupport/figures"
)

// Item 8, hostile input over HTTP: bodies above each limit, many of them at once, slow
// clients, and keys built to escape the data directory.

const hostileItem = 8

// Limits the hostile nodes run with: small, so a body over them costs little to send.
const (
	hostileKeyValueLimit = 64 << 10 // KURA_MAX_KEYVALUE_BYTES
	hostileXcodeLimit    = 1 << 20  // KURA_MAX_XCODE_BYTES
	partLimit            = 10 << 20 // storage.MaxPartBytes, fixed (SPEC §3)
	actionResultLimit    = 16 << 20 // httpapi.MaxActionResultBytes, fixed
	gradleLimit          = 100 << 20
	blobLimit            = 2 << 30 // Nx, Metro, Turborepo, plain objects, Bazel CAS
)

// readPastLimitMargin is what a refused body may cost beyond its limit. net/http reads up to
// 256 KiB of a body the handler left unread before it writes the response, and up to 256 KiB
// again when it closes that body, so the connection can be reused and a client that sends its
// whole body before reading sees the 413 rather than a reset (the chunked case pays both);
// then its 4 KiB read buffer and the request head. A false Content-Length's excess is parsed
// as the next request head, bounded by the 64 KiB header limit. The margin is a constant,
// whatever the body's size; anything above it is a server that kept reading.
const readPastLimitMargin = 2*256<<10 + 64<<10

func hostileNode(t *testing.T, env map[string]string) *harness.Node {
	t.Helper()
	all := map[string]string{
		"KURA_MAX_KEYVALUE_BYTES": fmt.Sprint(hostileKeyValueLimit),
		"KURA_MAX_XCODE_BYTES":    fmt.Sprint(hostileXcodeLimit),
	}
	for k, v := range env {
		all[k] = v
	}
	return harness.StartNode(t, harness.NodeOptions{Env: all})
}

func uniqueID(t testing.TB) string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// limitedSurface is one upload route and its limit.
type limitedSurface struct {
	name   string
	method string
	limit  int64
	// target returns a fresh request target (a fresh key, or a fresh multipart upload).
	target func(t *testing.T, n *harness.Node) string
	// headers the route needs besides the framing.
	headers []string
	// framings tried; a 2 GiB limit is only tried with its true length (refused before a
	// byte is read), since streaming 2 GiB per case is not a test of the limit but of patience.
	framings []bodyFraming
}

func hostileSurfaces() []limitedSurface {
	all := []bodyFraming{framingTrue, framingChunked, framingFalse}
	declaredOnly := []bodyFraming{framingTrue}
	gradleFramings := figures.Pick(declaredOnly, all)
	return []limitedSurface{
		{name: "keyvalue", method: "PUT", limit: hostileKeyValueLimit, framings: all,
			headers: []string{"Content-Type: application/json"},
			target: func(*testing.T, *harness.Node) string {
				return "/api/cache/keyvalue?tenant_id=default&namespace_id=hostile"
			}},
		{name: "xcode CAS", method: "POST", limit: hostileXcodeLimit, framings: all,
			target: func(t *testing.T, _ *harness.Node) string {
				return "/api/cache/cas/" + uniqueID(t) + "?tenant_id=default&namespace_id=hostile"
			}},
		{name: "multipart part", method: "POST", limit: partLimit, framings: all, target: startModuleUpload},
		{name: "bazel /ac/", method: "PUT", limit: actionResultLimit, framings: all,
			target: func(t *testing.T, _ *harness.Node) string {
				return "/ac/" + uniqueID(t) + uniqueID(t) + uniqueID(t) + uniqueID(t)
			}},
		{name: "gradle", method: "PUT", limit: gradleLimit, framings: gradleFramings,
			target: func(t *testing.T, _ *harness.Node) string {
				return "/api/cache/gradle/default/hostile/" + uniqueID(t)
			}},
		{name: "plain objects", method: "PUT", limit: blobLimit, framings: declaredOnly,
			target: func(t *testing.T, _ *harness.Node) string { return "/api/cache/objects/default/hostile/" + uniqueID(t) }},
		{name: "nx", method: "PUT", limit: blobLimit, framings: declaredOnly,
			target: func(t *testing.T, _ *harness.Node) string { return "/v1/cache/" + fmt.Sprint(time.Now().UnixNano()) }},
		{name: "turborepo", method: "PUT", limit: blobLimit, framings: declaredOnly,
			target: func(t *testing.T, _ *harness.Node) string { return "/v8/artifacts/" + uniqueID(t) + "?slug=hostile" }},
		{name: "metro", method: "PUT", limit: blobLimit, framings: declaredOnly,
			target: func(t *testing.T, _ *harness.Node) string { return "/api/metro/cache/" + uniqueID(t) }},
		{name: "bazel /cas/", method: "PUT", limit: blobLimit, framings: declaredOnly,
			target: func(t *testing.T, _ *harness.Node) string {
				return "/cas/" + uniqueID(t) + uniqueID(t) + uniqueID(t) + uniqueID(t)
			}},
	}
}

// startModuleUpload opens a multipart upload and returns its part target.
func startModuleUpload(t *testing.T, n *harness.Node) string {
	t.Helper()
	resp, err := n.Client(30*time.Second).Post(n.URL()+"/api/cache/module/start?tenant_id=default&namespace_id=hostile&hash="+uniqueID(t)+"&name=art.zip", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var started struct {
		UploadID *string `json:"upload_id"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&started); err != nil || resp.StatusCode != http.StatusOK || started.UploadID == nil {
		t.Fatalf("start a multipart upload: %d %v %+v", resp.StatusCode, err, started)
	}
	return "/api/cache/module/part?upload_id=" + *started.UploadID + "&part_number=1"
}

// TestReliabilityHostileBodyLimits sends a body over every upload limit with a true, a
// missing (chunked) and a false (shorter than the body) Content-Length, and measures with the
// node's own read counter how far past the limit it read. A true length over the limit is
// refused before the body is read; a chunked body is refused one byte past it; a false length
// is honoured (HTTP frames the body by it), so at most the declared bytes are the body and the
// rest is a malformed next request, refused without being stored.
func TestReliabilityHostileBodyLimits(t *testing.T) {
	node := hostileNode(t, nil)
	client := node.Client(30 * time.Second)
	var worstPast int64 = -1 << 62
	worstCase := ""
	refused, cases := 0, 0
	for _, s := range hostileSurfaces() {
		for _, framing := range s.framings {
			cases++
			target := s.target(t, node)
			bodyLen, declared := 2*s.limit, int64(0)
			if s.limit > 64<<20 {
				bodyLen = s.limit + 1 // declared only: the server must answer before reading
			}
			if framing == framingFalse {
				declared = s.limit / 2
			}
			var res rawResult
			read := serverRead(t, node, func() {
				res = sendRaw(node.HTTPAddr(), s.method, target, s.headers, framing, bodyLen, declared)
			})
			// What the server may legitimately read: the head, and the body up to the limit
			// (or up to the declared length when that is less).
			allowed := min(s.limit, bodyLen)
			if framing == framingFalse {
				allowed = declared
			}
			if framing == framingChunked {
				// Each chunk's size line and CRLF are read too: not body, not past the limit.
				allowed += (read/rawWriteChunk + 1) * int64(len(fmt.Sprintf("%x\r\n\r\n", rawWriteChunk)))
			}
			past := read - allowed
			t.Logf("%s, %s: status %d (%v), client sent %d body bytes, server read %d bytes: %+d past the %d it may read",
				s.name, framing, res.Status, res.Err, res.Sent, read, past, allowed)
			if past > worstPast {
				worstPast, worstCase = past, s.name+", "+framing.String()
			}
			switch framing {
			case framingFalse:
				// The declared half is the body; nothing past the limit may be stored.
				if res.Status == http.StatusRequestEntityTooLarge {
					t.Errorf("%s, %s: 413 for a body declared at half the limit", s.name, framing)
				}
				if res.Status/100 == 2 {
					expectStoredAtMost(t, client, node, s, target, declared)
				}
				refused++ // not over the limit as framed: nothing over it was stored
			default:
				if res.Status != http.StatusRequestEntityTooLarge {
					t.Errorf("%s, %s: status %d (%v), want 413", s.name, framing, res.Status, res.Err)
				} else {
					refused++
				}
			}
		}
	}
	figures.Check(t, hostileItem, "oversize bodies refused (413) or framed to within the limit", fmt.Sprintf("%d/%d", refused, cases), fmt.Sprintf("%d/%d", cases, cases))
	figures.Record(t, hostileItem, "max bytes read past the limit", fmt.Sprintf("%d B (%s)", worstPast, worstCase),
		fmt.Sprintf("<= %d B", readPastLimitMargin), worstPast <= readPastLimitMargin)
	if worstPast > readPastLimitMargin {
		t.Errorf("the server read %d bytes past a limit (%s), more than the %d-byte margin", worstPast, worstCase, readPastLimitMargin)
	}
}

// expectStoredAtMost checks that what a false Content-Length stored (if anything readable)
// is the declared bytes, never the rest of the body.
func expectStoredAtMost(t *testing.T, client *http.Client, node *harness.Node, s limitedSurface, target string, declared int64) {
	t.Helper()
	if s.name != "xcode CAS" && s.name != "gradle" {
		return // the other routes answer a GET elsewhere (multipart: after completion)
	}
	resp, err := client.Get(node.URL() + target)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	n, _ := io.Copy(io.Discard, resp.Body)
	if resp.StatusCode == http.StatusOK && n != declared {
		t.Errorf("%s: a false Content-Length of %d stored %d bytes", s.name, declared, n)
	}
}

// TestReliabilityHostileConcurrentOversize runs many oversize chunked uploads at once and
// samples the node's resident set: a server that buffered bodies, or kept reading past the
// limit, grows with the bytes sent; Kura's holds each upload's in-memory start (the segment
// store's 1 MiB spill threshold) and its copy buffers, whatever the body's size.
func TestReliabilityHostileConcurrentOversize(t *testing.T) {
	const limit = 8 << 20    // KURA_MAX_XCODE_BYTES: past the spill threshold, so bodies go to disk
	const bodyLen = 64 << 20 // per upload: 8 times the limit
	node := hostileNode(t, map[string]string{"KURA_MAX_XCODE_BYTES": fmt.Sprint(limit)})
	uploads := figures.Pick(20, 100)
	upload := func() rawResult {
		return sendRaw(node.HTTPAddr(), "POST", "/api/cache/cas/"+uniqueID(t)+"?tenant_id=default&namespace_id=hostile", nil, framingChunked, bodyLen, 0)
	}
	// Warm up: the first uploads allocate the pools and buffers every later one reuses.
	for range 3 {
		if res := upload(); res.Status != http.StatusRequestEntityTooLarge {
			t.Fatalf("warm-up upload: %d %v", res.Status, res.Err)
		}
	}
	baseline, err := node.RSSBytes()
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	peak := make(chan int64, 1)
	go func() {
		highest := baseline
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				peak <- highest
				return
			case <-tick.C:
				if v, err := node.RSSBytes(); err == nil && v > highest {
					highest = v
				}
			}
		}
	}()
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	var sent int64
	for range uploads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := upload()
			mu.Lock()
			defer mu.Unlock()
			statuses[res.Status]++
			sent += res.Sent
			if res.Err != nil {
				t.Logf("upload: %v", res.Err)
			}
		}()
	}
	wg.Wait()
	close(stop)
	growth := <-peak - baseline
	t.Logf("%d uploads of %d MiB against a %d MiB limit: statuses %v, %d MiB sent in all; RSS %d MiB at rest, +%d MiB at peak (race=%v)",
		uploads, bodyLen>>20, limit>>20, statuses, sent>>20, baseline>>20, growth>>20, harness.Race())
	figures.Check(t, hostileItem, fmt.Sprintf("concurrent oversize uploads refused with 413 (%d)", uploads), statuses[http.StatusRequestEntityTooLarge], uploads)
	// Each upload may hold the spill threshold, the garbage of growing its buffer there by
	// doubling (until the next collection) and its copy buffers: 2.5 MiB, measured at 2.2 MiB
	// without the race detector. 32 MiB covers the runtime's own slack. What must not show is
	// the body: 8 times the limit is offered per upload. The race detector's shadow memory multiplies whatever the process
	// touches (about 3 times here), so a race-built node gets 4 times the bound.
	bound := int64(uploads)*(5<<19) + 32<<20
	if harness.Race() {
		bound *= 4
	}
	figures.Record(t, hostileItem, fmt.Sprintf("RSS growth under %d concurrent oversize uploads", uploads),
		fmt.Sprintf("%.1f MiB (%d MiB sent; race=%v)", float64(growth)/(1<<20), sent>>20, harness.Race()), fmt.Sprintf("<= %d MiB", bound>>20), growth <= bound)
	if growth > bound {
		t.Errorf("RSS grew by %d MiB under %d oversize uploads, bound %d MiB", growth>>20, uploads, bound>>20)
	}
}

// slowAttack is one slow connection's fate.
type slowAttack struct {
	kind   string
	cutAt  time.Duration // from the first byte until the server closed or answered
	cut    bool
	answer string // what the server sent, if anything
}

// TestReliabilityHostileSlowClients opens connections that send their headers one byte at a
// time (slowloris) and connections that declare a body and stall in it, with the server's
// timeouts set to one second each, and times how soon the server cuts each one; meanwhile a
// normal client keeps uploading and reading small objects, and its latency is compared with
// the latency before the attack.
func TestReliabilityHostileSlowClients(t *testing.T) {
	const timeout = time.Second
	node := hostileNode(t, map[string]string{
		"KURA_HTTP_READ_HEADER_TIMEOUT_MS": fmt.Sprint(timeout.Milliseconds()),
		"KURA_HTTP_BODY_IDLE_TIMEOUT_MS":   fmt.Sprint(timeout.Milliseconds()),
	})
	attackers := figures.Pick(20, 200) // of each kind
	// A cut must come after the timeout (else it was not the timeout) and not long after it:
	// the slack covers a race-instrumented node on two busy cores.
	slack := 3 * time.Second

	// normal uploads and reads small objects: n of them, then on until done is closed.
	normal := func(n int, done <-chan struct{}) []time.Duration {
		client := node.Client(30 * time.Second)
		var lat []time.Duration
		for i := 0; ; i++ {
			if i >= n {
				select {
				case <-done:
					return lat
				default:
				}
			}
			url := fmt.Sprintf("%s/api/cache/cas/normal-%s-%d?tenant_id=default&namespace_id=hostile", node.URL(), uniqueID(t), i)
			start := time.Now()
			resp, err := client.Post(url, "application/octet-stream", strings.NewReader("a normal artifact"))
			if err != nil {
				t.Errorf("normal upload during the attack: %v", err)
				continue
			}
			resp.Body.Close()
			resp, err = client.Get(url)
			if err != nil {
				t.Errorf("normal read during the attack: %v", err)
				continue
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("normal read: %d", resp.StatusCode)
			}
			lat = append(lat, time.Since(start))
		}
	}
	closed := make(chan struct{})
	close(closed)
	before := percentile(normal(50, closed), 50)

	results := make(chan slowAttack, 2*attackers)
	var wg sync.WaitGroup
	for i := range 2 * attackers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				results <- slowHeaders(node.HTTPAddr(), timeout+slack+5*time.Second)
			} else {
				results <- stalledBody(node.HTTPAddr(), timeout+slack+5*time.Second)
			}
		}()
	}
	// The normal client runs for as long as the attackers are connected and being timed out.
	attacked := make(chan struct{})
	go func() { wg.Wait(); close(attacked) }()
	during := normal(50, attacked)
	close(results)

	cut, total := 0, 0
	var cutTimes []time.Duration
	for r := range results {
		total++
		ok := r.cut && r.cutAt >= timeout*8/10 && r.cutAt <= timeout+slack
		if ok {
			cut++
			cutTimes = append(cutTimes, r.cutAt)
		} else {
			t.Errorf("%s connection: cut=%v after %v (answer %q), want cut between %v and %v", r.kind, r.cut, r.cutAt, r.answer, timeout*8/10, timeout+slack)
		}
	}
	figures.Check(t, hostileItem, fmt.Sprintf("slow-header and stalled-body connections cut by the %v timeouts", timeout), fmt.Sprintf("%d/%d", cut, total), fmt.Sprintf("%d/%d", total, total))
	figures.Report(t, hostileItem, "time to cut a slow connection (p50 / max)", fmt.Sprintf("%v / %v", percentile(cutTimes, 50).Round(time.Millisecond), percentile(cutTimes, 100).Round(time.Millisecond)))
	p50 := percentile(during, 50)
	figures.Report(t, hostileItem, fmt.Sprintf("p50 of a normal upload+read during %d slow connections (%d requests; before: %v)", 2*attackers, len(during), before.Round(100*time.Microsecond)), p50.Round(100*time.Microsecond).String())
	// Normal requests keep their latency: a server whose accept loop or handlers were stuck
	// behind the attackers would show seconds here, not milliseconds.
	if p50 > before*5+50*time.Millisecond {
		t.Errorf("normal p50 %v during the attack, %v before it", p50, before)
	}
}

// slowHeaders sends a request head one byte every 100 ms and reports when the server gave up.
func slowHeaders(addr string, bound time.Duration) slowAttack {
	r := slowAttack{kind: "slow-header"}
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		r.answer = err.Error()
		return r
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(bound))
	start := time.Now()
	closed := make(chan string, 1)
	go func() {
		buf := make([]byte, 512)
		n, err := conn.Read(buf)
		closed <- fmt.Sprintf("%q %v", buf[:n], err)
	}()
	head := "GET /up HTTP/1.1\r\nHost: slow\r\nX-Slow: " + strings.Repeat("s", 1000)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case answer := <-closed:
			r.cut, r.cutAt, r.answer = true, time.Since(start), answer
			return r
		case <-tick.C:
			if i < len(head) {
				_, _ = conn.Write([]byte{head[i]}) // an error means the server closed: the read reports it
			}
		}
	}
}

// stalledBody declares a 1 MiB body, sends 10 bytes of it and stalls.
func stalledBody(addr string, bound time.Duration) slowAttack {
	r := slowAttack{kind: "stalled-body"}
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		r.answer = err.Error()
		return r
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(bound))
	var id [8]byte
	_, _ = rand.Read(id[:])
	req := fmt.Sprintf("POST /api/cache/cas/stalled-%x?tenant_id=default&namespace_id=hostile HTTP/1.1\r\nHost: slow\r\nContent-Length: %d\r\n\r\n0123456789", id, 1<<20)
	if _, err := io.WriteString(conn, req); err != nil {
		r.answer = err.Error()
		return r
	}
	start := time.Now()
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	r.cutAt = time.Since(start)
	r.answer = fmt.Sprintf("%q %v", buf[:n], err)
	var ne net.Error
	r.cut = !(errors.As(err, &ne) && ne.Timeout()) // our own deadline passing is not a cut
	return r
}
