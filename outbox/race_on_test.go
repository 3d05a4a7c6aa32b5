//go:build race

package outbox

// raceEnabled: the race detector's shadow memory inflates the resident set several times, so
// RSS figures measured under it say nothing about Kura.
const raceEnabled = true
