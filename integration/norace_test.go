//go:build !race

package integration

// raceDetector says the tests run with -race; see race_test.go.
const raceDetector = false
