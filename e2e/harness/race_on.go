//go:build race

package harness

// raceEnabled makes Main build kura with -race too, so a data race in the server under test
// fails the run like a race in a unit test does.
const raceEnabled = true
