package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// --metrics-listen with a port alone listens on loopback; a host is kept; anything else is refused with the flag
// named.
func TestMetricsAddress(t *testing.T) {
	t.Parallel()

	for in, want := range map[string]string{
		"9090": "127.0.0.1:9090", ":9090": "127.0.0.1:9090", "0.0.0.0:9090": "0.0.0.0:9090", "[::1]:0": "[::1]:0",
		"127.0.0.1:0": "127.0.0.1:0",
	} {
		got, err := metricsAddress(in)
		if assert.NoError(t, err, in) {
			assert.Equal(t, want, got, in)
		}
	}

	for _, in := range []string{"metrics", "99999", "host:port:9"} {
		_, err := metricsAddress(in)
		assert.ErrorContains(t, err, "--metrics-listen", in)
	}
}

// --log-level and --log-format take zap's level names and console or json; others are refused with the flag named.
func TestLoggerFlags(t *testing.T) {
	t.Parallel()

	for _, format := range []string{logFormatConsole, logFormatJSON} {
		logger, err := newLogger("debug", format)
		require.NoError(t, err, format)
		assert.True(t, logger.Core().Enabled(-1), "debug enabled")
	}

	logger, err := newLogger("warn", logFormatJSON)
	require.NoError(t, err)
	assert.False(t, logger.Core().Enabled(0), "info disabled at warn")

	_, err = newLogger("loud", logFormatJSON)
	assert.ErrorContains(t, err, "--log-level")

	_, err = newLogger("info", "xml")
	assert.ErrorContains(t, err, "--log-format")
}
