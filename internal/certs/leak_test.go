package certs

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's run when a test leaves a goroutine behind (reliability item 12).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
