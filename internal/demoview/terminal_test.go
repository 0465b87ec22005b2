package demoview

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// On a terminal the frame (header, view, notes for good, then the held ones by key) redraws in place: the next
// frame moves the cursor back over the last one and clears what is left below it. A dropped key's notes go.
func TestConsoleRedrawsInPlace(t *testing.T) {
	var out bytes.Buffer

	c := NewConsole(&out, false, time.Now())
	c.terminal = &terminal{w: &out, fd: -1} // no size to read: 80x24
	c.endpoint = "127.0.0.1:50651"

	c.Note("c2", "✗ c2-w-1 failed")
	c.Note("", "! c1 is blocked")
	c.Note("c1", "✗ c1-w-1 failed")
	c.HideCursor()
	c.Redraw()

	frame := strings.TrimPrefix(out.String(), "\x1b[?25l")
	require.True(t, strings.HasSuffix(frame, "\x1b[J"), "%q", frame)
	assert.Equal(t, []string{
		"upshift demo  0s  engine 127.0.0.1:50651",
		"! c1 is blocked",
		"✗ c1-w-1 failed",
		"✗ c2-w-1 failed",
	}, strings.Split(strings.TrimSuffix(strings.ReplaceAll(strings.TrimSuffix(frame, "\x1b[J"), "\r\x1b[2K", ""), "\n"), "\n"))

	out.Reset()
	c.Drop("c1")
	c.Redraw()
	c.ShowCursor()

	assert.True(t, strings.HasPrefix(out.String(), "\x1b[4A\r\x1b[2Kupshift demo"), "%q", out.String())
	assert.NotContains(t, out.String(), "c1-w-1")
	assert.True(t, strings.HasSuffix(out.String(), "✗ c2-w-1 failed\n\x1b[J\x1b[?25h"), "%q", out.String())
}
