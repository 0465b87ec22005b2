// Package loopback hands out loopback TCP ports to servers that must know their port before they bind it: etcd
// members advertise theirs to their peers (and keep it across an emulated reboot), child processes take theirs as a
// flag.
//
// A port the kernel picks for a listen on port 0 comes from its ephemeral range, the same range every outgoing
// connection on the machine takes its source port from. Between choosing such a port and binding it, or while an
// emulated node is down, any connection may take it, and the server then fails with "address already in use".
// Ports below the ephemeral range are only ever taken by an explicit bind, so a random free one stays free.
package loopback

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// lowest is the lowest port handed out: above the well-known and most registered service ports.
const lowest = 10000

// defaultEphemeralStart is Linux's default start of the ephemeral range, used when the kernel does not say.
const defaultEphemeralStart = 32768

// attempts bounds the random ports tried before giving up.
const attempts = 100

// Port returns a port on 127.0.0.1 that is free now and lies below the kernel's ephemeral port range.
func Port() (int, error) {
	high := ephemeralStart()

	var lastErr error

	for range attempts {
		port := lowest + rand.IntN(high-lowest)

		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			lastErr = err

			continue
		}

		if err = l.Close(); err != nil {
			return 0, fmt.Errorf("releasing probe of port %d: %w", port, err)
		}

		return port, nil
	}

	return 0, fmt.Errorf("no free loopback port in %d-%d after %d tries: %w", lowest, high-1, attempts, lastErr)
}

// Addr is Port as a "127.0.0.1:PORT" address.
func Addr() (string, error) {
	port, err := Port()
	if err != nil {
		return "", err
	}

	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), nil
}

// ephemeralStart reads the start of the kernel's ephemeral port range.
func ephemeralStart() int {
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return defaultEphemeralStart
	}

	fields := strings.Fields(string(data))
	if len(fields) == 0 {
		return defaultEphemeralStart
	}

	start, err := strconv.Atoi(fields[0])
	if err != nil || start <= lowest+attempts {
		return defaultEphemeralStart
	}

	return start
}
