package memory

import (
	"context"
	"io"
	"net"
	"sync"
	"time"

	"streamspace.dev/agent"
	"streamspace.dev/libs/wire"
)

// The simulated stream endpoint: every running session reports port StreamPort, named
// StreamPortName, and a connection to it first receives Greeting, then an echo of
// everything it sends.
const (
	StreamPort     = 5900
	StreamPortName = "vnc"
	Greeting       = "RFB 003.008\n"
)

var _ agent.SessionDialer = (*Backend)(nil)

// FailDial makes DialSession of session id fail with err (a *wire.Error tells the
// gateway whether retrying helps) until cleared with FailDial(id, nil).
func (b *Backend) FailDial(id wire.SessionID, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err == nil {
		delete(b.failDial, id)
		return
	}
	b.failDial[id] = err
}

// DialSession implements agent.SessionDialer: it connects over loopback TCP to the
// session's own listener, which exists while the session runs. An unknown session or
// port is not_found (permanent); a session that is not running is unavailable.
func (b *Backend) DialSession(ctx context.Context, id wire.SessionID, portName string, port int) (io.ReadWriteCloser, error) {
	b.mu.Lock()
	if b.unavailable != nil {
		b.mu.Unlock()
		return nil, b.unavailable
	}
	if err := b.failDial[id]; err != nil {
		b.mu.Unlock()
		return nil, err
	}
	s, ok := b.sessions[id]
	var addr string
	if ok && s.ln != nil {
		addr = s.ln.Addr().String()
	}
	b.mu.Unlock()
	switch {
	case !ok:
		return nil, &wire.Error{Code: wire.CodeNotFound, Message: "no such session on this agent", Permanent: true}
	case portName != "" && portName != StreamPortName, portName == "" && port != StreamPort:
		return nil, &wire.Error{Code: wire.CodeNotFound, Message: "the session has no such port", Permanent: true}
	case addr == "":
		return nil, &wire.Error{Code: wire.CodeUnavailable, Message: "the session is not running", RetryAfter: time.Second}
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		// The session stopped between the lookup and the dial.
		return nil, &wire.Error{Code: wire.CodeUnavailable, Message: "the session is not running", RetryAfter: time.Second}
	}
	return c, nil
}

// listen opens the session's stream listener if it has none. It runs under b.mu; a
// listener that cannot be opened leaves the session running without one, which dials
// report as unavailable.
func (s *session) listen() {
	if s.ln != nil {
		return
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return
	}
	s.ln = ln
	go serveEcho(ln)
}

// stopListening closes the listener, which also cuts the open streams, as a pod going
// away would. It runs under b.mu.
func (s *session) stopListening() {
	if s.ln != nil {
		_ = s.ln.Close()
		s.ln = nil
	}
}

// serveEcho greets and echoes every connection ln accepts; once ln closes it closes the
// connections still open.
func serveEcho(ln net.Listener) {
	var mu sync.Mutex
	open := map[net.Conn]struct{}{}
	for {
		c, err := ln.Accept()
		if err != nil {
			mu.Lock()
			for c := range open {
				_ = c.Close()
			}
			open = nil
			mu.Unlock()
			return
		}
		mu.Lock()
		open[c] = struct{}{}
		mu.Unlock()
		go func() {
			defer func() {
				mu.Lock()
				delete(open, c)
				mu.Unlock()
				_ = c.Close()
			}()
			if _, err := io.WriteString(c, Greeting); err != nil {
				return
			}
			// A client that does not read stalls its own echo, and TCP pushes back on its
			// writes; nothing buffers without bound.
			_, _ = io.Copy(c, c)
		}()
	}
}
