package kubeemu

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// echoServer answers every line it reads with the same line, until the test ends.
func echoServer(t *testing.T) string {
	t.Helper()

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { l.Close() }) //nolint:errcheck

	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}

			go func() {
				defer conn.Close() //nolint:errcheck

				io.Copy(conn, conn) //nolint:errcheck
			}()
		}
	}()

	return l.Addr().String()
}

// roundTrip sends a line through conn and reads it back.
func roundTrip(conn net.Conn) error {
	if _, err := conn.Write([]byte("ping\n")); err != nil {
		return err
	}

	line, err := bufio.NewReader(conn).ReadString('\n')
	if err == nil && line != "ping\n" {
		err = errors.New("echoed " + line)
	}

	return err
}

// TestEndpointInterrupt proxies connections to a server, and an interruption cuts the open ones, refuses new ones
// for its duration, and returns once new connections are served again.
func TestEndpointInterrupt(t *testing.T) {
	t.Parallel()

	e, err := newEndpoint(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(e.close)

	open, err := net.Dial("tcp", e.addr())
	if err != nil {
		t.Fatal(err)
	}

	defer open.Close() //nolint:errcheck

	if err = roundTrip(open); err != nil {
		t.Fatalf("through the endpoint: %v", err)
	}

	const outage = 500 * time.Millisecond

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	interrupted := make(chan error, 1)
	start := time.Now()

	go func() { interrupted <- e.interrupt(ctx, outage) }()

	// The open connection is cut: reads end without an answer.
	open.SetDeadline(time.Now().Add(30 * time.Second)) //nolint:errcheck

	if err = roundTrip(open); err == nil {
		t.Fatal("a connection open before the interruption still works")
	}

	// Until the interruption ends, a new connection is accepted and reset at once.
	for time.Since(start) < outage/2 {
		conn, err := net.Dial("tcp", e.addr())
		if err != nil {
			break // refused outright is as good
		}

		conn.SetDeadline(time.Now().Add(30 * time.Second)) //nolint:errcheck

		err = roundTrip(conn)
		conn.Close() //nolint:errcheck

		if err == nil && time.Since(start) < outage {
			t.Fatal("a connection was served during the interruption")
		}
	}

	if err = <-interrupted; err != nil {
		t.Fatal(err)
	}

	if took := time.Since(start); took < outage {
		t.Fatalf("interrupt returned after %s, before the %s outage ended", took, outage)
	}

	conn, err := net.Dial("tcp", e.addr())
	if err != nil {
		t.Fatal(err)
	}

	defer conn.Close() //nolint:errcheck

	if err = roundTrip(conn); err != nil {
		t.Fatalf("after the interruption: %v", err)
	}
}
