package config

import (
	"fmt"
	"strings"
)

// Problem is one thing wrong with the configuration.
type Problem struct {
	Variable string // the KURA_* variable at fault
	Message  string // what is wrong, e.g. `"abc" is not a port number (1..65535)`
}

func (p Problem) String() string { return p.Variable + ": " + p.Message }

// ValidationError lists every problem Load found, in the order the variables are read.
type ValidationError struct {
	Problems []Problem
}

func (e *ValidationError) Error() string {
	var b strings.Builder
	if len(e.Problems) == 1 {
		b.WriteString("invalid configuration (1 problem):")
	} else {
		fmt.Fprintf(&b, "invalid configuration (%d problems):", len(e.Problems))
	}
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p.String())
	}
	return b.String()
}
