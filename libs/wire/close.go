package wire

import "fmt"

// CloseCode is a QUIC application error code: the code a peer closes a whole connection
// with (CONNECTION_CLOSE), and the code it resets or stops a single stream with
// (RESET_STREAM, STOP_SENDING). It is a uint64 like quic.ApplicationErrorCode and
// quic.StreamErrorCode, so a transport converts it without this package importing one:
// quic.ApplicationErrorCode(wire.CloseRevoked).
//
// A close code backs up the message that normally precedes it (an Error or a Goodbye on
// the control stream), because CONNECTION_CLOSE discards unsent stream data and may
// overtake it. The set is open: a receiver treats a code it does not know as retryable,
// so new codes are a minor change, sent only once the accepted minor includes them (see
// For). Values are fixed forever once published. See PROTOCOL.md, "Close codes".
type CloseCode uint64

// The close codes. Only CloseRevoked and CloseForbidden are permanent.
const (
	// CloseNormal: an orderly close (after a Goodbye), or a stream cancelled for no
	// fault of the peer's.
	CloseNormal CloseCode = 0x0
	// CloseProtocol: the peer sent something undecodable or unexpected. Retryable: the
	// peer may be redeployed.
	CloseProtocol CloseCode = 0x1
	// CloseSuperseded: a newer connection of the same agent took over. Retryable, with
	// backoff: reconnecting at once would take the tunnel back and ping-pong.
	CloseSuperseded CloseCode = 0x2
	// CloseRevoked: the agent was deleted; its certificate is refused from now on.
	// Permanent.
	CloseRevoked CloseCode = 0x3
	// CloseGoingAway: the gateway replica is draining or stopping; reconnect at once,
	// elsewhere.
	CloseGoingAway CloseCode = 0x4
	// CloseForbidden: the agent may not use this tunnel (its Hello names another agent,
	// its certificate is not enrolled, its protocol version is not spoken here).
	// Permanent.
	CloseForbidden CloseCode = 0x5
	// CloseUnavailable: the gateway cannot serve the agent right now (for example its
	// database is unreachable), which says nothing about the agent's standing. Retryable,
	// with backoff; the Error that precedes it may carry a RetryAfter. Since 1.1; to a
	// 1.0 peer the gateway sends CloseGoingAway instead (see For).
	CloseUnavailable CloseCode = 0x6
)

// closeCodes describes the known codes: name, permanence, the minor that introduced
// the code, and what to send instead to a peer whose accepted minor predates it.
var closeCodes = [...]struct {
	name      string
	permanent bool
	since     uint8
	fallback  CloseCode
}{
	CloseNormal:      {name: "normal"},
	CloseProtocol:    {name: "protocol"},
	CloseSuperseded:  {name: "superseded"},
	CloseRevoked:     {name: "revoked", permanent: true},
	CloseGoingAway:   {name: "going away"},
	CloseForbidden:   {name: "forbidden", permanent: true},
	CloseUnavailable: {name: "unavailable", since: 1, fallback: CloseGoingAway},
}

// Known reports whether c is a close code of this build.
func (c CloseCode) Known() bool { return c < CloseCode(len(closeCodes)) }

// String names the code for logs.
func (c CloseCode) String() string {
	if c.Known() {
		return closeCodes[c].name
	}
	return fmt.Sprintf("close-code(0x%x)", uint64(c))
}

// Permanent reports whether a connection closed with c must not be retried until
// something changes on one side (the agent is re-enrolled, the operator intervenes):
// CloseRevoked and CloseForbidden. Every other code, including unknown ones from a newer
// peer, is retryable.
func (c CloseCode) Permanent() bool { return c.Known() && closeCodes[c].permanent }

// Retryable is !Permanent: reconnecting, with backoff, may succeed.
func (c CloseCode) Retryable() bool { return !c.Permanent() }

// For returns the code to send to a peer with whom version accepted was negotiated: c
// itself if that version includes it, else the older code closest in meaning. Before
// negotiation (the zero Version) only 1.0 codes are sent.
func (c CloseCode) For(accepted Version) CloseCode {
	for c.Known() && closeCodes[c].since > 0 && (accepted.Major != Major || accepted.Minor < closeCodes[c].since) {
		c = closeCodes[c].fallback
	}
	return c
}
