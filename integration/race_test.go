//go:build race

package integration

// raceDetector says the tests run with -race (as `make test` runs them), which multiplies memory per goroutine and
// per allocation, so bounds on the engine's memory are looser there.
const raceDetector = true
