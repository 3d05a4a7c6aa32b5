package segment

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/fdpool"
)

// backdate sets the segment file's modification time an hour back, as for a record written
// long before it is read: only then is a check remembered (mtimeGranularity).
func backdate(t *testing.T, m *Manager, loc Location) {
	t.Helper()
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(m.segPath(loc.Segment), old, old); err != nil {
		t.Fatal(err)
	}
}

// streamBody is large enough to be read as a stream (above wholeRecordBytes), with a partial
// last block.
func streamBody() []byte { return testBody(42, 5*BlockSize-7) }

func TestVerifiedRecordIsTrustedUntilItsFileChanges(t *testing.T) {
	m := openManager(t, Options{})
	body := streamBody()
	loc := commit(t, m, "hot", body)

	// Just written: the check is not remembered (a write in the same timestamp tick would
	// not move mtime).
	mustRead(t, m, loc, "hot", body)
	mustRead(t, m, loc, "hot", body)
	if n := m.trustedReads.Load(); n != 0 {
		t.Fatalf("%d trusted reads of a record checked right after its write", n)
	}

	backdate(t, m, loc)
	mustRead(t, m, loc, "hot", body) // checks every block and remembers it
	mustRead(t, m, loc, "hot", body)
	if got, err := readRecord(m, loc, "hot", 70000, 100000); err != nil || !bytes.Equal(got, body[70000:170000]) {
		t.Fatalf("trusted range read: %v", err)
	}
	if n := m.trustedReads.Load(); n != 2 {
		t.Fatalf("trusted reads = %d, want 2", n)
	}

	// Damage written through the kernel moves mtime: the next read checks again and
	// refuses the damaged block.
	flipByte(t, m.segPath(loc.Segment), loc.Offset+2*BlockSize+10)
	got, err := readRecord(m, loc, "hot", 0, -1)
	if !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("read after damage: %v, want ErrCorrupt", err)
	}
	if len(got) > 2*BlockSize || !bytes.Equal(got, body[:len(got)]) {
		t.Fatalf("served %d bytes; at most the 2 intact blocks before the damage", len(got))
	}
	if n := m.trustedReads.Load(); n != 2 {
		t.Fatalf("a changed file was trusted (%d trusted reads)", n)
	}
}

func TestVerifiedMarkExpires(t *testing.T) {
	m := openManager(t, Options{})
	body := streamBody()
	loc := commit(t, m, "hot", body)
	backdate(t, m, loc)
	mustRead(t, m, loc, "hot", body)
	m.verified.ttl = time.Nanosecond
	mustRead(t, m, loc, "hot", body)
	if n := m.trustedReads.Load(); n != 0 {
		t.Fatalf("an expired mark was trusted (%d trusted reads)", n)
	}
}

func TestNoVerifiedSetChecksEveryRead(t *testing.T) {
	m := openManager(t, Options{NoVerifiedSet: true})
	body := streamBody()
	loc := commit(t, m, "hot", body)
	backdate(t, m, loc)
	for range 3 {
		mustRead(t, m, loc, "hot", body)
	}
	if n := m.trustedReads.Load(); n != 0 {
		t.Fatalf("%d trusted reads with NoVerifiedSet", n)
	}
}

func TestRangeReadDoesNotMarkTheRecord(t *testing.T) {
	m := openManager(t, Options{})
	body := streamBody()
	loc := commit(t, m, "hot", body)
	backdate(t, m, loc)
	if _, err := readRecord(m, loc, "hot", BlockSize, -1); err != nil {
		t.Fatal(err)
	}
	mustRead(t, m, loc, "hot", body)
	if n := m.trustedReads.Load(); n != 0 {
		t.Fatalf("a record only partly checked was trusted (%d trusted reads)", n)
	}
}

// sendOverTCP WriteTo's body bytes [off, off+n) of the record into a loopback TCP connection
// (whose ReadFrom is the sendfile path) and returns what the other end received.
func sendOverTCP(t *testing.T, m *Manager, loc Location, name string, off, n int64, beforeSend func()) ([]byte, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	received := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			received <- nil
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		received <- b
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r, err := m.OpenRecord(context.Background(), loc, []byte(name), off, n)
	if err != nil {
		_ = conn.Close()
		<-received
		return nil, err
	}
	if beforeSend != nil {
		beforeSend()
	}
	_, werr := io.Copy(conn, r)
	_ = r.Close()
	_ = conn.Close()
	return <-received, werr
}

func TestWriteToSendsAVerifiedRecordWithSendfile(t *testing.T) {
	m := openManager(t, Options{})
	body := streamBody()
	loc := commit(t, m, "hot", body)
	backdate(t, m, loc)

	// Not yet checked: WriteTo checks block by block and writes from the block buffer.
	got, err := sendOverTCP(t, m, loc, "hot", 0, -1, nil)
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("first send: %v (%d bytes)", err, len(got))
	}
	if n := m.sendfiles.Load(); n != 0 {
		t.Fatalf("sendfile used for an unchecked record (%d)", n)
	}
	for _, rg := range []struct{ off, n int64 }{{0, -1}, {1000, 3 * BlockSize}, {int64(len(body)) - 10, -1}} {
		got, err := sendOverTCP(t, m, loc, "hot", rg.off, rg.n, nil)
		end := int64(len(body))
		if rg.n >= 0 {
			end = rg.off + rg.n
		}
		if err != nil || !bytes.Equal(got, body[rg.off:end]) {
			t.Fatalf("send of [%d, %d): %v (%d bytes)", rg.off, end, err, len(got))
		}
	}
	if n := m.sendfiles.Load(); n != 3 {
		t.Fatalf("sendfile used %d times, want 3", n)
	}
	if inUse := m.pool.InUse(); inUse > m.handles.size+2 {
		t.Fatalf("%d descriptors still checked out after the sends", inUse)
	}
}

func TestSendOfARemovedSegmentServesItsBytes(t *testing.T) {
	m := openManager(t, Options{TargetSegmentBytes: 1}) // every record in a segment of its own
	body := streamBody()
	loc := commit(t, m, "hot", body)
	backdate(t, m, loc)
	mustRead(t, m, loc, "hot", body)
	// Eviction removes the file between the open and the send: the reader's handle keeps the
	// bytes readable, so the client still gets exactly the record.
	got, err := sendOverTCP(t, m, loc, "hot", 0, -1, func() {
		if err := m.Remove(loc.Segment); err != nil {
			t.Errorf("Remove: %v", err)
		}
	})
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("send after removal: %v (%d bytes)", err, len(got))
	}
}

// TestSendfileDescriptors: one sender per segment uses the shared handle's offset (no extra
// descriptor); a concurrent one opens a private descriptor only while half of the FD pool is
// free, and otherwise sends with preads — intact either way.
func TestSendfileDescriptors(t *testing.T) {
	pool, err := fdpool.New(8, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	m := openManager(t, Options{Pool: pool, HandleCacheSize: 1})
	body := streamBody()
	loc := commit(t, m, "hot", body)
	backdate(t, m, loc)
	mustRead(t, m, loc, "hot", body)
	send := func(what string, wantSendfiles uint64) {
		t.Helper()
		got, err := sendOverTCP(t, m, loc, "hot", 0, -1, nil)
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("%s: %v (%d bytes)", what, err, len(got))
		}
		if n := m.sendfiles.Load(); n != wantSendfiles {
			t.Fatalf("%s: %d sendfiles, want %d", what, n, wantSendfiles)
		}
	}
	held := 0
	for pool.InUse() < pool.Capacity()/2 {
		if err := pool.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
		held++
	}
	send("under pressure, offset free", 1)
	m.handles.mu.Lock()
	h := m.handles.entries[loc.Segment]
	m.handles.mu.Unlock()
	if h == nil {
		t.Fatal("the segment's handle is not cached")
	}
	h.offsetMu.Lock() // another sender owns the shared offset
	send("under pressure, offset taken", 1)
	for range held {
		pool.Release()
	}
	send("with room, offset taken", 2)
	h.offsetMu.Unlock()
}
