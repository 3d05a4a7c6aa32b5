//go:build !linux

package config

import (
	"errors"
	"runtime"
)

// Kura targets Linux; elsewhere the probes report failure so the documented fallbacks
// apply and KURA_DISK_BUDGET_BYTES must be set explicitly.
var errUnsupportedOS = errors.New("host probing is only implemented on linux, not " + runtime.GOOS)

func getrlimitNOFILE() (uint64, error) { return 0, errUnsupportedOS }

func sysinfoTotalRAM() (uint64, error) { return 0, errUnsupportedOS }

func filesystemSize(string) (uint64, error) { return 0, errUnsupportedOS }
