package kubeemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// endpoint is the cluster's API endpoint, the address its admin kubeconfig names: a TCP proxy in front of
// kube-apiserver (TLS passes through untouched), like the load balancer or VIP in front of a real cluster's API
// servers. It exists so a kube-apiserver restart can be shown to clients (interrupt) without restarting the real
// process, which takes seconds and more under load: the outage lasts exactly as long as asked.
type endpoint struct {
	listener net.Listener
	target   string

	mu        sync.Mutex
	conns     map[net.Conn]struct{} // both ends of every proxied connection
	downUntil time.Time
	closed    bool

	wg sync.WaitGroup
}

// newEndpoint listens on a free loopback port and forwards every connection to target (host:port).
func newEndpoint(target string) (*endpoint, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening for the API endpoint: %w", err)
	}

	e := &endpoint{listener: l, target: target, conns: map[net.Conn]struct{}{}}

	e.wg.Go(e.serve)

	return e, nil
}

// addr is the endpoint's host:port.
func (e *endpoint) addr() string { return e.listener.Addr().String() }

func (e *endpoint) serve() {
	for {
		conn, err := e.listener.Accept()
		if err != nil {
			return // closed
		}

		e.wg.Go(func() { e.proxy(conn) })
	}
}

// refuse resets a connection at once, as a client connecting to a port nobody listens on sees it.
func refuse(conn net.Conn) {
	if tcp, ok := conn.(*net.TCPConn); ok {
		tcp.SetLinger(0) //nolint:errcheck // best effort: a plain close refuses too
	}

	conn.Close() //nolint:errcheck
}

// proxy copies bytes both ways until either side closes or an interruption cuts the connection; while the
// endpoint is interrupted it refuses the connection.
func (e *endpoint) proxy(client net.Conn) {
	if !e.track(client) {
		refuse(client)

		return
	}

	defer e.untrack(client)

	upstream, err := net.DialTimeout("tcp", e.target, 5*time.Second)
	if err != nil {
		refuse(client)

		return
	}

	if !e.track(upstream) {
		refuse(client)
		upstream.Close() //nolint:errcheck

		return
	}

	defer e.untrack(upstream)

	done := make(chan struct{}, 2)

	pipe := func(dst, src net.Conn) {
		io.Copy(dst, src) //nolint:errcheck // the connection ends either way
		done <- struct{}{}
	}

	go pipe(upstream, client)
	go pipe(client, upstream)

	<-done

	client.Close()   //nolint:errcheck
	upstream.Close() //nolint:errcheck

	<-done
}

// track registers a live connection pair; it refuses while interrupted or closed.
func (e *endpoint) track(conns ...net.Conn) bool {
	e.mu.Lock()
	defer e.mu.Unlock()

	if e.closed || time.Now().Before(e.downUntil) {
		return false
	}

	for _, c := range conns {
		e.conns[c] = struct{}{}
	}

	return true
}

func (e *endpoint) untrack(conns ...net.Conn) {
	e.mu.Lock()
	defer e.mu.Unlock()

	for _, c := range conns {
		delete(e.conns, c)
	}
}

// cutLocked closes every proxied connection. The caller holds e.mu.
func (e *endpoint) cutLocked() {
	for c := range e.conns {
		refuse(c)
		delete(e.conns, c)
	}
}

// interrupt cuts every connection and refuses new ones for d (an interruption already under way is extended), then
// returns once the endpoint serves again, or when ctx ends.
func (e *endpoint) interrupt(ctx context.Context, d time.Duration) error {
	e.mu.Lock()

	if e.closed {
		e.mu.Unlock()

		return errors.New("the API endpoint is closed")
	}

	if until := time.Now().Add(d); until.After(e.downUntil) {
		e.downUntil = until
	}

	e.cutLocked()
	e.mu.Unlock()

	for {
		e.mu.Lock()
		wait := time.Until(e.downUntil)
		e.mu.Unlock()

		if wait <= 0 {
			return nil
		}

		timer := time.NewTimer(wait)

		select {
		case <-ctx.Done():
			timer.Stop()

			return fmt.Errorf("waiting for the API endpoint to serve again: %w", ctx.Err())
		case <-timer.C:
		}
	}
}

// close stops accepting, cuts every connection and waits for the proxy goroutines.
func (e *endpoint) close() {
	e.mu.Lock()
	e.closed = true
	e.cutLocked()
	e.mu.Unlock()

	e.listener.Close() //nolint:errcheck
	e.wg.Wait()
}
