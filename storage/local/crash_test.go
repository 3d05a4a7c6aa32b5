package local

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/storagetest"
)

// crashChildEnv switches the test binary into the crash child: it writes into the directory
// named by the variable until it is killed.
const crashChildEnv = "KURA_LOCAL_CRASH_CHILD_DIR"

func crashOptions(dir string) Options {
	return Options{
		DataDir:            dir,
		TargetSegmentBytes: 1 << 20,   // roll often: crashes hit fresh segments too
		SpillThreshold:     256 << 10, // some bodies take the spilled path
		Metadata:           smallMeta(),
	}
}

func crashKey(w, seq int) storage.Key {
	return storage.Key{Tenant: "acme", Namespace: "crash", Kind: storage.KindCAS, Name: fmt.Sprintf("w%d-%d", w, seq)}
}

func crashKVKey(w int) storage.Key {
	return storage.Key{Tenant: "acme", Namespace: "crash", Kind: storage.KindKeyValue, Name: fmt.Sprintf("kv%d", w)}
}

func crashBody(w, seq int) []byte {
	size := 200 + (seq*37)%2000
	if seq%50 == 49 {
		size = 600 << 10
	}
	return storagetest.Bytes(uint64(w)<<32|uint64(seq), size)
}

func crashKVBody(seq int) []byte { return []byte(fmt.Sprintf(`{"seq":%d}`, seq)) }

// crashImmKey is an immutable key each worker keeps replacing with replicated copies of ever
// lower versions (each one the cluster's first writer so far), so a crash lands in the middle
// of body replacements too.
func crashImmKey(w int) storage.Key {
	return storage.Key{Tenant: "acme", Namespace: "crash", Kind: storage.KindGradle, Name: fmt.Sprintf("imm%d", w)}
}

// crashImmVersion is the version of worker w's replicated copy number seq: lower each time.
func crashImmVersion(seq int) storage.Version {
	return storage.MakeVersion(1_700_000_000_000, 0) - storage.Version(seq)
}

func crashImmBody(w, seq int) []byte {
	return storagetest.Bytes(uint64(w)<<40|uint64(seq)|1<<60, 100+(seq*53)%5000)
}

// TestCrashChild is the child half of TestCrashRecovery; it does nothing in a normal run.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashChildEnv)
	if dir == "" {
		t.Skip("only runs as TestCrashRecovery's child process")
	}
	s, err := Open(crashOptions(dir))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	ack := func(format string, args ...any) {
		// One write per line, straight to the descriptor: a line is complete once the Put it
		// reports has returned.
		line := fmt.Sprintf(format, args...)
		mu.Lock()
		_, _ = os.Stdout.WriteString(line)
		mu.Unlock()
	}
	deadline := time.Now().Add(2 * time.Minute) // never outlive a parent that died
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := 0; time.Now().Before(deadline); seq++ {
				body := crashBody(w, seq)
				if _, err := s.Put(context.Background(), crashKey(w, seq), bytes.NewReader(body), storage.PutOptions{Size: int64(len(body))}); err != nil {
					ack("ERR %v\n", err)
					return
				}
				ack("ACK cas %d %d\n", w, seq)
				if seq%10 == 0 {
					if _, err := s.Put(context.Background(), crashKVKey(w), bytes.NewReader(crashKVBody(seq)), storage.PutOptions{Size: storage.UnknownSize}); err != nil {
						ack("ERR %v\n", err)
						return
					}
					ack("ACK kv %d %d\n", w, seq)
				}
				if seq%10 == 5 {
					body := crashImmBody(w, seq)
					sum := sha256.Sum256(body)
					res, err := s.Put(context.Background(), crashImmKey(w), bytes.NewReader(body),
						storage.PutOptions{Size: int64(len(body)), ExpectedSHA256: &sum, Version: crashImmVersion(seq)})
					if err != nil || !res.Created {
						ack("ERR replicated replace %d/%d: %+v %v\n", w, seq, res, err)
						return
					}
					ack("ACK imm %d %d\n", w, seq)
				}
			}
		}()
	}
	// Batch writers (workers 100..103): PutBatch of 20 consecutive items, each acknowledged
	// once the batch returned it without error, in order, so the parent checks them like the
	// single writers' (some bodies exceed the spill threshold and take Put inside the batch).
	for w := 100; w < 104; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := 0; time.Now().Before(deadline); seq += 20 {
				items := make([]storage.PutItem, 20)
				for j := range items {
					body := crashBody(w, seq+j)
					sum := sha256.Sum256(body)
					items[j] = storage.PutItem{Key: crashKey(w, seq+j), Body: body, Opts: storage.PutOptions{Size: int64(len(body)), ExpectedSHA256: &sum}}
				}
				for j, r := range s.PutBatch(context.Background(), items) {
					if r.Err != nil || !r.Created {
						ack("ERR batch %d/%d: %+v %v\n", w, seq+j, r.PutResult, r.Err)
						return
					}
					ack("ACK cas %d %d\n", w, seq+j)
				}
			}
		}()
	}
	// A namespace deleter (worker 300): one object, the namespace's deletion, then a
	// replicated copy older than the tombstone, refused as stale from the in-memory
	// tombstones; the parent checks that the tombstone survived the kill the same way.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for seq := 0; time.Now().Before(deadline); seq++ {
			key := crashGoneKey(seq)
			if _, err := s.Put(context.Background(), key, strings.NewReader("gone"), storage.PutOptions{Size: 4}); err != nil {
				ack("ERR %v\n", err)
				return
			}
			if err := s.DeleteNamespace(context.Background(), key.Tenant, key.Namespace, 0); err != nil {
				ack("ERR %v\n", err)
				return
			}
			if err := putOlderThanTombstone(s, key); !errors.Is(err, storage.ErrStale) {
				ack("ERR a copy older than the tombstone of %v: %v, want ErrStale\n", key, err)
				return
			}
			ack("ACK del 300 %d\n", seq)
		}
	}()
	wg.Wait()
	_ = s.Close()
}

// crashGoneKey is the object of the namespace the deleter removes in its round seq.
func crashGoneKey(seq int) storage.Key {
	return storage.Key{Tenant: "acme", Namespace: fmt.Sprintf("gone-%d", seq), Kind: storage.KindCAS, Name: "x"}
}

// putOlderThanTombstone writes a replicated copy of key stamped long before any deletion.
func putOlderThanTombstone(s *Store, key storage.Key) error {
	_, err := s.Put(context.Background(), key, strings.NewReader("old!"),
		storage.PutOptions{Size: 4, Version: storage.MakeVersion(1_600_000_000_000, 0)})
	return err
}

// TestCrashRecovery SIGKILLs a process in the middle of many concurrent puts and checks that
// every acknowledged write reads back byte-identical after reopening, and that nothing torn is
// ever served.
func TestCrashRecovery(t *testing.T) {
	if os.Getenv(crashChildEnv) != "" {
		t.Skip("parent only")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	acked := map[int]int{}    // worker → highest acknowledged cas seq (acks arrive in order per worker)
	ackedKV := map[int]int{}  // worker → highest acknowledged keyvalue seq
	ackedImm := map[int]int{} // worker → highest acknowledged replicated replacement seq
	ackedDel := -1            // highest acknowledged namespace deletion
	casAcks, kvAcks := 0, 0
	var childErr string
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		r := bufio.NewReader(stdout)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return // a torn last line (no newline) is not an acknowledgement
			}
			f := strings.Fields(line)
			mu.Lock()
			switch {
			case len(f) == 4 && f[0] == "ACK":
				w, _ := strconv.Atoi(f[2])
				seq, _ := strconv.Atoi(f[3])
				switch f[1] {
				case "cas":
					acked[w] = seq
					casAcks++
				case "imm":
					ackedImm[w] = seq
				case "del":
					ackedDel = seq
				default:
					ackedKV[w] = seq
					kvAcks++
				}
			case len(f) > 0 && f[0] == "ERR":
				childErr = line
			}
			mu.Unlock()
		}
	}()
	// Kill once enough writes were acknowledged (or after a few seconds of them), so the
	// kill lands while many puts are in flight.
	start := time.Now()
	var firstAck time.Time
	for {
		mu.Lock()
		n, cerr := casAcks, childErr
		mu.Unlock()
		if cerr != "" {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("child failed: %s\nstderr:\n%s", cerr, stderr.String())
		}
		if n > 0 && firstAck.IsZero() {
			firstAck = time.Now()
		}
		if n >= 3000 || !firstAck.IsZero() && time.Since(firstAck) > 4*time.Second {
			break
		}
		if time.Since(start) > time.Minute {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("child acknowledged only %d writes in a minute; stderr:\n%s", n, stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	<-readDone

	opts := crashOptions(dir)
	opts.Registerer = nil
	s := openStore(t, opts)
	// The existence index rebuilt after the kill answers FindMissing exactly like Pebble.
	var crashKeys []storage.Key
	for w, last := range acked {
		for seq := 0; seq <= last+64; seq++ {
			crashKeys = append(crashKeys, crashKey(w, seq))
		}
		crashKeys = append(crashKeys, crashKVKey(w), crashImmKey(w))
	}
	waitExistence(t, s)
	assertIndexAgrees(t, s, crashKeys, "after kill -9")
	intact, inflight := 0, 0
	for w, last := range acked {
		for seq := 0; seq <= last+64; seq++ {
			key := crashKey(w, seq)
			got, err := read(t, s, key)
			if seq <= last {
				if err != nil || !bytes.Equal(got, crashBody(w, seq)) {
					t.Fatalf("acknowledged %v lost or damaged after kill -9: %d bytes, %v", key, len(got), err)
				}
				intact++
				continue
			}
			switch {
			case isNotFound(err):
			case err == nil && bytes.Equal(got, crashBody(w, seq)):
				inflight++ // committed but killed before the ack was printed
			default:
				t.Fatalf("unacknowledged %v served damaged data: %d bytes, %v", key, len(got), err)
			}
		}
	}
	for w, seq := range ackedKV {
		got, err := read(t, s, crashKVKey(w))
		var stored int
		if err != nil || !bytes.Equal(got, crashKVBody(mustScan(got, &stored))) || stored < seq {
			t.Fatalf("keyvalue %d: acknowledged seq %d, stored %q (%v)", w, seq, got, err)
		}
	}
	// A replaced immutable body is the last acknowledged replacement or a later one (killed
	// before its ack), whole, at that copy's version: never the old body back, never torn.
	for w, acked := range ackedImm {
		info, err := s.Stat(ctx(t), crashImmKey(w))
		if err != nil {
			t.Fatalf("replaced immutable %d: %v", w, err)
		}
		seq := int(crashImmVersion(0) - info.Version)
		got, err := read(t, s, crashImmKey(w))
		if seq < acked || err != nil || !bytes.Equal(got, crashImmBody(w, seq)) {
			t.Fatalf("replaced immutable %d: acknowledged copy %d, stored copy %d (%d bytes, %v)", w, acked, seq, len(got), err)
		}
	}
	if len(ackedImm) == 0 {
		t.Fatal("no replicated replacement was acknowledged before the kill")
	}
	if _, ok := acked[100]; !ok {
		t.Fatal("no batched write was acknowledged before the kill")
	}
	// Every acknowledged deletion's tombstone survived: the object is gone and a copy older
	// than the tombstone is still refused.
	if ackedDel < 0 {
		t.Fatal("no namespace deletion was acknowledged before the kill")
	}
	for seq := 0; seq <= ackedDel; seq++ {
		key := crashGoneKey(seq)
		if _, err := s.Stat(ctx(t), key); !isNotFound(err) {
			t.Fatalf("object of the deleted namespace %s: %v, want not found", key.Namespace, err)
		}
		if err := putOlderThanTombstone(s, key); !errors.Is(err, storage.ErrStale) {
			t.Fatalf("copy older than the tombstone of %s after kill -9: %v, want ErrStale", key.Namespace, err)
		}
	}
	// Every stored object, acknowledged or not, verifies end to end.
	var startKey []byte
	total := 0
	for {
		entries, next, err := s.db.ScanManifests(ctx(t), startKey, nil, 500)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.Err != nil {
				t.Fatalf("manifest damaged after crash: %v", e.Err)
			}
			r, err := s.Open(ctx(t), e.Key, 0, -1)
			if err != nil {
				t.Fatalf("open %v: %v", e.Key, err)
			}
			h := sha256.New()
			_, err = io.Copy(h, r)
			_ = r.Close()
			if err != nil || [32]byte(h.Sum(nil)) != e.Manifest.SHA256 {
				t.Fatalf("stored %v does not verify: %v", e.Key, err)
			}
			total++
		}
		if next == nil {
			break
		}
		startKey = next
	}
	if v := counterValue(s.metrics.corrupt); v != 0 {
		t.Fatalf("%v corrupt records after the crash", v)
	}
	t.Logf("kill -9 after %d acknowledged puts (+%d keyvalue): %d acknowledged intact, %d unacknowledged but complete, %d objects verified",
		casAcks, kvAcks, intact, inflight, total)
}

func mustScan(b []byte, seq *int) int {
	_, _ = fmt.Sscanf(string(b), `{"seq":%d}`, seq)
	return *seq
}
