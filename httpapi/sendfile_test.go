package httpapi

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// storeCounter is the value of an unlabelled counter of the disk store.
func storeCounter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s is not registered", name)
	return 0
}

// backdateFiles sets every file under dir an hour back, as for artifacts written long before
// they are read: only then does a full read's check go into the verified-record set.
func backdateFiles(t *testing.T, dir string) {
	t.Helper()
	old := time.Now().Add(-time.Hour)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		return os.Chtimes(p, old, old)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// flipInFiles flips the byte of the first file under dir that contains marker, at the
// marker's start.
func flipInFiles(t *testing.T, dir string, marker []byte) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		i := bytes.Index(b, marker)
		if i < 0 {
			return nil
		}
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte{b[i] ^ 0x5a}, int64(i)); err != nil {
			return err
		}
		return fs.SkipAll
	})
	if err != nil {
		t.Fatal(err)
	}
}

func getBody(t *testing.T, h *harness, url string) (int, []byte, error) {
	t.Helper()
	resp, err := h.client.Get(url)
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// TestLargeGetIsSentWithSendfileAndStillNeverServesDamage: a large artifact read again after
// a full, checked read goes out with sendfile and arrives intact; once the segment file is
// damaged, the next GET checks the blocks again and cuts the response short before the
// damaged block, so the client never receives a wrong byte under a 200.
func TestLargeGetIsSentWithSendfileAndStillNeverServesDamage(t *testing.T) {
	h := newHarness(t, harnessOpts{disk: true})
	body := make([]byte, 3<<20+12345)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range body {
		body[i] = byte(r.Uint32())
	}
	url := h.base + "/api/cache/cas/big?tenant_id=acme&namespace_id=ns"
	resp, err := h.client.Post(url, "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("PUT: status %d", resp.StatusCode)
	}
	backdateFiles(t, h.dataDir)
	for range 3 {
		status, got, err := getBody(t, h, url)
		if err != nil || status != http.StatusOK || !bytes.Equal(got, body) {
			t.Fatalf("GET: status %d, %d bytes, %v", status, len(got), err)
		}
	}
	if n := storeCounter(t, h.storeReg, "kura_segment_reads_sendfile_total"); n != 2 {
		t.Fatalf("%v reads went out with sendfile, want 2 (the first one checks the blocks)", n)
	}

	const damageAt = 2<<20 + 100
	flipInFiles(t, h.dataDir, body[damageAt:damageAt+64])
	status, got, err := getBody(t, h, url)
	if status == http.StatusOK && !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("GET of a damaged artifact: status 200, %d bytes, err %v; want a cut-short response", len(got), err)
	}
	if len(got) > damageAt || !bytes.Equal(got, body[:len(got)]) {
		t.Fatalf("client received %d bytes that are not an intact prefix before the damage", len(got))
	}
	if n := storeCounter(t, h.storeReg, "kura_segment_reads_sendfile_total"); n != 2 {
		t.Fatalf("the damaged file was trusted (%v sendfile reads)", n)
	}
}
