// Command table prints the reliability suite's figures as one Markdown table, from the JSON
// lines the tests appended to KURA_RELIABILITY_REPORT:
//
//	go run ./e2e/reliability/table report.jsonl
//
// It exits 1 when any figure missed its bound, so a script can fail on it.
package main

import (
	"fmt"
	"os"

	"github.com/kuracache/kura/internal/testsupport/figures"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: table REPORT.jsonl")
		os.Exit(2)
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "table: %v\n", err)
		os.Exit(2)
	}
	defer f.Close()
	figs, err := figures.Read(f)
	if err != nil {
		fmt.Fprintf(os.Stderr, "table: %s: %v\n", os.Args[1], err)
		os.Exit(2)
	}
	fmt.Print(figures.Table(figs))
	for _, fig := range figs {
		if !fig.OK {
			os.Exit(1)
		}
	}
}
