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

func TestMemoryIndex(t *testing.T) {
	RunIndexSuite(t, func(*testing.T) IndexStore { return NewMemory() })
}
