package wire

import (
	"fmt"
	"strconv"
	"strings"
)

// The protocol version this build speaks. Major changes only with an incompatible change
// (and a new ALPN); Minor grows with every additive change. See PROTOCOL.md, "Versioning"
// and "Changes".
//
//   - 1.0: the initial protocol.
//   - 1.1: Hello.Tags and Hello.AppliedChecksum (the gateway skips the full push when the
//     latter matches); the close codes defined here, including the new CloseUnavailable.
//   - 1.2: Heartbeat.Capacity is optional: a heartbeat without it is liveness only, and
//     the agent sends capacity on change and every CapacityRefresh-th beat.
const (
	Major uint8 = 1
	Minor uint8 = 2
)

// alpnPrefix is the ALPN protocol name without its major version.
const alpnPrefix = "streamspace-agent/"

// ALPN is the TLS application protocol of the current major version. The ALPN, not a
// message, carries the major version so that an agent and a gateway with no major version
// in common fail in the TLS handshake, before either has parsed a byte of ours.
const ALPN = alpnPrefix + "1"

// previousMajors lists the older majors this build still accepts, newest first. It is
// empty while version 1 is the only one; when version 2 ships, 1 goes here for as long as
// deployed agents may still speak it.
var previousMajors = []uint8{}

// Version is a protocol version. Two peers interoperate when their majors are equal; the
// minor they use is the lower of the two (see Negotiate).
type Version struct {
	Major uint8 `json:"major"`
	Minor uint8 `json:"minor"`
}

// Current is the version this build speaks.
var Current = Version{Major: Major, Minor: Minor}

// String formats v as "major.minor".
func (v Version) String() string { return fmt.Sprintf("%d.%d", v.Major, v.Minor) }

// SupportedMajor reports whether this build can speak major version m.
func SupportedMajor(m uint8) bool {
	if m == Major {
		return true
	}
	for _, p := range previousMajors {
		if p == m {
			return true
		}
	}
	return false
}

// SupportedALPNs returns the ALPN names this build accepts, most preferred first: the
// current major, then any previous majors still supported. Both sides put the list in
// tls.Config.NextProtos; TLS then picks the newest major both speak. A fresh slice is
// returned so callers may keep or modify it.
func SupportedALPNs() []string {
	out := make([]string, 0, 1+len(previousMajors))
	out = append(out, ALPN)
	for _, p := range previousMajors {
		out = append(out, ALPNFor(p))
	}
	return out
}

// ALPNFor returns the ALPN name of major version m.
func ALPNFor(m uint8) string { return alpnPrefix + strconv.Itoa(int(m)) }

// ParseALPN returns the major version named by an ALPN protocol name such as
// "streamspace-agent/1". It checks syntax only (a decimal major from 1 to 255, no sign,
// no leading zeros, nothing after it), so that "streamspace-agent/01" can never be
// mistaken for version 1; whether the major is supported is SupportedMajor's question.
// Any other string yields a *ProtocolError of KindBadALPN.
func ParseALPN(proto string) (uint8, error) {
	digits, ok := strings.CutPrefix(proto, alpnPrefix)
	if !ok || digits == "" || len(digits) > 3 || digits[0] == '0' {
		return 0, &ProtocolError{Kind: KindBadALPN, Detail: fmt.Sprintf("not a streamspace-agent ALPN: %q", proto)}
	}
	n := 0
	for i := 0; i < len(digits); i++ {
		c := digits[i]
		if c < '0' || c > '9' {
			return 0, &ProtocolError{Kind: KindBadALPN, Detail: fmt.Sprintf("not a streamspace-agent ALPN: %q", proto)}
		}
		n = n*10 + int(c-'0')
	}
	if n > 255 {
		return 0, &ProtocolError{Kind: KindBadALPN, Detail: fmt.Sprintf("major version out of range: %q", proto)}
	}
	return uint8(n), nil
}

// Negotiate returns the version to use with a peer that announced peer: the same major,
// and the lower of the two minors, because a minor only adds things and each side must
// stay within what the other understands. A major this build does not speak yields an
// *Error with code CodeUnsupportedVersion, which is permanent: retrying cannot help until
// one side is upgraded.
func Negotiate(peer Version) (Version, error) {
	if !SupportedMajor(peer.Major) {
		return Version{}, &Error{
			Code:      CodeUnsupportedVersion,
			Message:   fmt.Sprintf("protocol %s not supported; this side speaks %s", peer, Current),
			Permanent: true,
		}
	}
	if peer.Major != Major {
		// An older major still supported: that major's newest minor is what we implement.
		return peer, nil
	}
	return Version{Major: Major, Minor: min(peer.Minor, Minor)}, nil
}

// StreamType says what a stream carries; it is the last byte of the preamble. New types
// may be added in a minor version, but a peer only opens a stream of a new type once the
// negotiated minor includes it, because an older reader rejects types it does not know.
type StreamType uint8

// The stream types of protocol version 1. Values are fixed forever once published.
const (
	// StreamControl is the first stream of a connection, opened by the agent: Hello and
	// HelloAck, then heartbeats, status reports, acks, errors and goodbyes.
	StreamControl StreamType = 0x01
	// StreamDesiredState is opened by the gateway to push desired state (DesiredState
	// messages); the agent answers with Ack messages on the same stream.
	StreamDesiredState StreamType = 0x02
	// StreamSession is opened by the gateway per browser connection: one
	// SessionStreamHeader, one Ack (or Error) back, then raw session bytes both ways.
	StreamSession StreamType = 0x03
	// StreamCert is opened by the agent to renew its client certificate:
	// CertRenewRequest, then CertRenewResponse or Error.
	StreamCert StreamType = 0x04
)

// String names the stream type for logs.
func (s StreamType) String() string {
	switch s {
	case StreamControl:
		return "control"
	case StreamDesiredState:
		return "desired-state"
	case StreamSession:
		return "session"
	case StreamCert:
		return "cert"
	}
	return fmt.Sprintf("stream-type(0x%02x)", uint8(s))
}

// Known reports whether s is a stream type of this build.
func (s StreamType) Known() bool { return s >= StreamControl && s <= StreamCert }

// SkipsUnknown reports whether readers of this stream type skip message types they do
// not know (true) or fail the stream with KindUnknownType (false). Only the control
// stream is lenient: it is long-lived, and failing it would drop the whole tunnel over an
// advisory message from a newer peer. The other streams each carry one exchange whose
// meaning would change if part of it were ignored, so they are strict.
func (s StreamType) SkipsUnknown() bool { return s == StreamControl }

// Signature opens every stream. Its first byte 0xF5 never occurs in UTF-8, so it cannot
// begin text, JSON, HTTP or a TLS record, so a stream of any other protocol (or a misrouted
// client) fails at the first read, not deep in JSON decoding; "SSW" makes it readable in
// a hex dump.
const Signature = "\xF5SSW"

// PreambleSize is the length of a preamble in bytes.
const PreambleSize = 7

// Preamble is the fixed header of every stream: it names the protocol, the writer's
// version and what the stream carries, so the reader can dispatch before decoding
// anything else. The version is the writer's own (the control stream is written before
// any negotiation); readers accept any minor of a major they support, because minors only
// add.
type Preamble struct {
	Version Version
	Stream  StreamType
}

// AppendBinary appends the 7-byte encoding of p to b.
func (p Preamble) AppendBinary(b []byte) ([]byte, error) {
	b = append(b, Signature...)
	return append(b, p.Version.Major, p.Version.Minor, byte(p.Stream)), nil
}

// ParsePreamble decodes and checks a 7-byte preamble. It fails with a *ProtocolError of
// KindBadPreamble for a wrong signature or length, KindUnsupportedVersion for a major this
// build does not speak, and KindUnknownStreamType for a stream type it does not know.
func ParsePreamble(b []byte) (Preamble, error) {
	if len(b) != PreambleSize {
		return Preamble{}, &ProtocolError{Kind: KindBadPreamble, Detail: fmt.Sprintf("preamble is %d bytes, want %d", len(b), PreambleSize)}
	}
	if string(b[:4]) != Signature {
		return Preamble{}, &ProtocolError{Kind: KindBadPreamble, Detail: fmt.Sprintf("bad signature % x", b[:4])}
	}
	p := Preamble{Version: Version{Major: b[4], Minor: b[5]}, Stream: StreamType(b[6])}
	if !SupportedMajor(p.Version.Major) {
		return p, &ProtocolError{Kind: KindUnsupportedVersion, Detail: fmt.Sprintf("protocol %s not supported", p.Version)}
	}
	if !p.Stream.Known() {
		return p, &ProtocolError{Kind: KindUnknownStreamType, Detail: fmt.Sprintf("unknown %s", p.Stream)}
	}
	return p, nil
}
