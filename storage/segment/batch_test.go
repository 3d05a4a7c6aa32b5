package segment

import (
	"context"
	"crypto/sha256"
	"fmt"
	"testing"
)

// TestAppendBatch: the records of a batch land back to back in the active segment, read back
// (name, body, digest) like Commit's, and cost one sync together.
func TestAppendBatch(t *testing.T) {
	m := openManager(t, Options{})
	commit(t, m, "before", testBody(0, 100)) // the batch appends after an existing record
	var recs []Record
	for i := range 50 {
		body := testBody(uint64(i+1), 1+i*997%(200<<10))
		recs = append(recs, Record{Name: []byte(fmt.Sprintf("r%d", i)), Body: body, SHA256: sha256.Sum256(body)})
	}
	syncs := m.Stats().Syncs
	locs, err := m.AppendBatch(context.Background(), recs)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Stats().Syncs - syncs; got != 1 {
		t.Errorf("the batch took %d syncs, want 1", got)
	}
	for i, loc := range locs {
		if i > 0 && loc.Offset != locs[i-1].Offset+locs[i-1].RecordSize {
			t.Errorf("record %d at %d, want right after record %d", i, loc.Offset, i-1)
		}
		if loc.RecordSize != RecordSize(int64(len(recs[i].Body)), len(recs[i].Name)) {
			t.Errorf("record %d: size %d", i, loc.RecordSize)
		}
		mustRead(t, m, loc, string(recs[i].Name), recs[i].Body)
	}
	if st := m.Stats(); st.Appends != 51 {
		t.Errorf("Appends = %d, want 51 records", st.Appends)
	}
}

// TestAppendBatchRefuses what does not fit one buffered write, before writing anything.
func TestAppendBatchRefuses(t *testing.T) {
	m := openManager(t, Options{SpillThreshold: 1 << 10})
	big := testBody(1, 2<<10)
	if _, err := m.AppendBatch(context.Background(), []Record{{Name: []byte("big"), Body: big}}); err == nil {
		t.Error("a body above the spill threshold was appended")
	}
	if got := m.TotalBytes(); got != 0 {
		t.Errorf("%d bytes written by refused batches", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := m.AppendBatch(ctx, []Record{{Name: []byte("x"), Body: []byte("y")}}); err == nil {
		t.Error("a cancelled batch was appended")
	}
}
