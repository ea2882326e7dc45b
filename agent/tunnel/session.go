package tunnel

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"streamspace.dev/agent"
	"streamspace.dev/libs/wire"
)

// sessionDialTimeout bounds how long the browser waits for the agent to reach a session.
const sessionDialTimeout = 10 * time.Second

// serveSession answers a session stream: read the header, dial the session through the
// backend, Ack, then pipe raw bytes both ways until either side closes. The stream is
// the unit of flow control, so one slow viewer stalls only itself.
func (c *conn) serveSession(st *quic.Stream, rd *wire.Reader) {
	w := wire.NewWriter(st)
	if err := w.WritePreamble(wire.StreamSession); err != nil {
		st.CancelRead(scode(wire.CloseProtocol))
		return
	}
	refuse := func(e *wire.Error) {
		_ = w.Write(e)
		st.CancelRead(scode(wire.CloseNormal))
		_ = st.Close()
	}
	msg, err := rd.Read()
	if err != nil {
		refuse(wire.ErrorOf(err))
		return
	}
	hdr := msg.(*wire.SessionStreamHeader) // the Reader admits nothing else first
	dialer, ok := c.t.cfg.Backend.(agent.SessionDialer)
	if !ok {
		refuse(&wire.Error{Code: wire.CodeUnavailable, Message: "this agent's backend carries no session traffic", Permanent: true})
		return
	}
	ctx, cancel := context.WithTimeout(c.applyCtx, sessionDialTimeout)
	target, err := dialer.DialSession(ctx, hdr.SessionID, hdr.PortName, hdr.Port)
	cancel()
	if err != nil {
		c.log.Warn("session dial failed", "session", hdr.SessionID, "err", err)
		refuse(wire.ErrorOf(err))
		return
	}
	if err := w.Write(&wire.Ack{SessionID: hdr.SessionID}); err != nil {
		_ = target.Close()
		return
	}
	// The Reader never reads ahead, so everything after the header on st is session bytes.
	var wg sync.WaitGroup
	wg.Go(func() {
		_, _ = io.Copy(target, st)
		if cw, ok := target.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			_ = target.Close()
		}
	})
	_, err = io.Copy(st, target)
	if err != nil && !errors.Is(err, io.EOF) {
		st.CancelWrite(scode(wire.CloseNormal))
	} else {
		_ = st.Close()
	}
	// Tear down the other direction too once the session side is done.
	st.CancelRead(scode(wire.CloseNormal))
	_ = target.Close()
	wg.Wait()
}
