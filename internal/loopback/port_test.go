package loopback

import (
	"net"
	"strconv"
	"testing"
)

func TestPortIsFreeAndBelowTheEphemeralRange(t *testing.T) {
	high := ephemeralStart()

	seen := map[int]bool{}

	for range 20 {
		port, err := Port()
		if err != nil {
			t.Fatal(err)
		}

		if port < lowest || port >= high {
			t.Fatalf("port %d outside [%d, %d)", port, lowest, high)
		}

		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			t.Fatalf("port %d was handed out but cannot be bound: %v", port, err)
		}

		seen[port] = true

		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}

	if len(seen) < 2 {
		t.Fatalf("20 calls handed out %d distinct port(s); ports should be spread to avoid collisions between processes", len(seen))
	}
}

func TestPortSkipsATakenPort(t *testing.T) {
	// Hold every port but a few in a small window is impractical; instead hold one handed-out port and check that
	// the next calls never return it while it is held.
	held, err := Port()
	if err != nil {
		t.Fatal(err)
	}

	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(held)))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close() //nolint:errcheck

	for range 200 {
		port, err := Port()
		if err != nil {
			t.Fatal(err)
		}

		if port == held {
			t.Fatalf("Port returned %d, which is bound", port)
		}
	}
}
