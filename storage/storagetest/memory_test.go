package storagetest

import (
	"testing"

	"github.com/kuracache/kura/storage"
)

func TestMemoryStore(t *testing.T) {
	RunStoreSuite(t, func(*testing.T) storage.Store { return NewMemory() })
}

func TestMemoryMultipart(t *testing.T) {
	RunMultipartSuite(t, func(*testing.T) MultipartStore { return NewMemory() })
}
