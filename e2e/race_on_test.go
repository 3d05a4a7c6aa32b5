//go:build race

package e2e

// raceEnabled makes the harness build kura with -race too, so a data race in the server
// under real client traffic fails the run like a race in a unit test does.
const raceEnabled = true
