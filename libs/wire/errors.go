package wire

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"streamspace.dev/libs/apperr"
)

// Code classifies an Error on the wire. The first ten codes are spelled exactly like
// apperr's, so a business error crosses the tunnel without a translation table; the rest
// are about the protocol itself. Receivers treat a code they do not know like
// CodeInternal and rely on Permanent and RetryAfter, which is why new codes are a minor
// change.
type Code string

// The codes of protocol version 1.
const (
	CodeInvalid            Code = "invalid"
	CodeUnauthenticated    Code = "unauthenticated"
	CodeForbidden          Code = "forbidden"
	CodeNotFound           Code = "not_found"
	CodeConflict           Code = "conflict"
	CodePreconditionFailed Code = "precondition_failed"
	CodeQuotaExceeded      Code = "quota_exceeded"
	CodeRateLimited        Code = "rate_limited"
	CodeUnavailable        Code = "unavailable"
	CodeInternal           Code = "internal"
	// CodeProtocol says the peer sent bytes this side could not decode or did not expect.
	CodeProtocol Code = "protocol"
	// CodeUnsupportedVersion says the peer's protocol version is not spoken here.
	CodeUnsupportedVersion Code = "unsupported_version"
)

// permanentByDefault lists the codes whose errors cannot succeed on retry without a change
// on one side (new credentials, a fixed request, an upgrade). ErrorOf uses it when the
// source error carries no explicit policy.
var permanentByDefault = map[Code]bool{
	CodeInvalid:            true,
	CodeUnauthenticated:    true,
	CodeForbidden:          true,
	CodeNotFound:           true,
	CodePreconditionFailed: true,
	CodeUnsupportedVersion: true,
}

// Error is an error one peer reports to the other, and a Message (type "error"). It
// carries its retry policy, so the receiver's reconnect and retry loops decide by value,
// never by reading Message: Permanent means retrying cannot help until something changes
// (the agent stops its backoff and surfaces the problem); otherwise RetryAfter, when
// positive, is the earliest useful retry. RetryAfter travels as whole milliseconds,
// rounded up so that a positive delay never becomes zero.
type Error struct {
	Code       Code
	Message    string
	Permanent  bool
	RetryAfter time.Duration
}

// Error implements error.
func (e *Error) Error() string {
	s := fmt.Sprintf("wire: %s: %s", e.Code, e.Message)
	if e.Permanent {
		s += " (permanent)"
	} else if e.RetryAfter > 0 {
		s += fmt.Sprintf(" (retry after %s)", e.RetryAfter)
	}
	return s
}

// Is makes errors.Is(err, &wire.Error{Code: c}) match any *Error with code c, so callers
// can test for a class without a sentinel per message.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Message == "" && t.Code == e.Code
}

// errorJSON is Error's wire form; see PROTOCOL.md.
type errorJSON struct {
	Code         Code   `json:"code"`
	Message      string `json:"message"`
	Permanent    bool   `json:"permanent"`
	RetryAfterMS int64  `json:"retry_after_ms,omitempty"`
}

// MarshalJSON encodes RetryAfter as retry_after_ms.
func (e *Error) MarshalJSON() ([]byte, error) {
	return json.Marshal(errorJSON{Code: e.Code, Message: e.Message, Permanent: e.Permanent, RetryAfterMS: millis(e.RetryAfter)})
}

// UnmarshalJSON decodes retry_after_ms into RetryAfter, rejecting negative values.
func (e *Error) UnmarshalJSON(b []byte) error {
	var j errorJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	d, err := fromMillis("retry_after_ms", j.RetryAfterMS)
	if err != nil {
		return err
	}
	*e = Error{Code: j.Code, Message: j.Message, Permanent: j.Permanent, RetryAfter: d}
	return nil
}

// ErrorOf converts err into the Error to send to the peer. An *Error in err's chain is
// returned as is; a *ProtocolError becomes CodeProtocol (or CodeUnsupportedVersion); an
// *apperr.Error keeps its code, message and retry advice, with permanence from its code.
// Any other error becomes a retryable internal error whose text is withheld: it may name
// hosts, paths or SQL, and the peer belongs to another trust domain.
func ErrorOf(err error) *Error {
	if err == nil {
		return nil
	}
	if e, ok := errors.AsType[*Error](err); ok {
		return e
	}
	if p, ok := errors.AsType[*ProtocolError](err); ok {
		if p.Kind == KindUnsupportedVersion || p.Kind == KindBadALPN {
			return &Error{Code: CodeUnsupportedVersion, Message: p.Error(), Permanent: true}
		}
		return &Error{Code: CodeProtocol, Message: p.Error()}
	}
	if a, ok := apperr.As(err); ok && a.Code.Valid() {
		c := Code(a.Code)
		return &Error{Code: c, Message: a.Message, Permanent: permanentByDefault[c], RetryAfter: a.RetryAfter}
	}
	return &Error{Code: CodeInternal, Message: "internal error"}
}

// Retryable tells a retry or reconnect loop whether err is worth retrying and, if the
// error says so, how long to wait at least (0 means "use your own backoff").
//
//   - nil and context.Canceled: no; there is nothing to retry, or we are shutting down.
//   - *Error: as it says (Permanent, RetryAfter).
//   - *ProtocolError: no for a version mismatch (only an upgrade helps); yes otherwise,
//     because a peer that sent garbage may be redeployed, and backoff bounds the cost.
//   - *apperr.Error: by its code, as ErrorOf would send it.
//   - anything else (EOF, timeouts, QUIC and network faults): yes; a transport that was
//     there once will likely be there again.
func Retryable(err error) (retry bool, after time.Duration) {
	if err == nil || errors.Is(err, context.Canceled) {
		return false, 0
	}
	if e, ok := errors.AsType[*Error](err); ok {
		if e.Permanent {
			return false, 0
		}
		return true, max(e.RetryAfter, 0)
	}
	if p, ok := errors.AsType[*ProtocolError](err); ok {
		return p.Kind != KindUnsupportedVersion && p.Kind != KindBadALPN, 0
	}
	if _, ok := apperr.As(err); ok {
		e := ErrorOf(err)
		if e.Permanent {
			return false, 0
		}
		return true, max(e.RetryAfter, 0)
	}
	return true, 0
}

// Kind classifies a ProtocolError. Values are for code only; they never cross the wire
// (ErrorOf maps them to codes).
type Kind uint8

// The decoding failures.
const (
	// KindBadPreamble: the stream does not start with Signature, or ends inside it.
	KindBadPreamble Kind = iota + 1
	// KindUnsupportedVersion: the preamble names a major this build does not speak.
	KindUnsupportedVersion
	// KindUnknownStreamType: the preamble names a stream type this build does not know.
	KindUnknownStreamType
	// KindBadALPN: ParseALPN was given a name that is not ours or is malformed.
	KindBadALPN
	// KindOversized: a length prefix exceeds the reader's limit (or a message the writer's).
	KindOversized
	// KindTruncated: the stream ended inside a frame.
	KindTruncated
	// KindMalformed: a frame is not a valid envelope, or its body not a valid message.
	KindMalformed
	// KindUnknownType: the envelope's type is not one this build knows, on a stream that
	// does not skip unknown types.
	KindUnknownType
	// KindUnexpectedType: a known message type arrived on a stream type that never
	// carries it.
	KindUnexpectedType
)

var kindNames = [...]string{
	KindBadPreamble:        "bad preamble",
	KindUnsupportedVersion: "unsupported version",
	KindUnknownStreamType:  "unknown stream type",
	KindBadALPN:            "bad ALPN",
	KindOversized:          "oversized frame",
	KindTruncated:          "truncated frame",
	KindMalformed:          "malformed frame",
	KindUnknownType:        "unknown message type",
	KindUnexpectedType:     "unexpected message type",
}

// String names the kind for logs.
func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// ProtocolError is a failure to decode (or, for KindOversized, to encode) the protocol.
// Callers select on Kind with errors.As or IsKind; Detail is for humans only.
type ProtocolError struct {
	Kind   Kind
	Detail string
	// Type is the envelope type, for KindUnknownType and KindUnexpectedType.
	Type MessageType
	// Err is the underlying cause (a JSON syntax error, io.ErrUnexpectedEOF), if any.
	Err error
}

// Error implements error.
func (e *ProtocolError) Error() string {
	s := "wire: " + e.Kind.String()
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the cause.
func (e *ProtocolError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, &wire.ProtocolError{Kind: k}) match any ProtocolError of kind k.
func (e *ProtocolError) Is(target error) bool {
	t, ok := target.(*ProtocolError)
	return ok && t.Detail == "" && t.Err == nil && t.Type == "" && t.Kind == e.Kind
}

// IsKind reports whether err's chain holds a *ProtocolError of kind k.
func IsKind(err error, k Kind) bool {
	p, ok := errors.AsType[*ProtocolError](err)
	return ok && p.Kind == k
}

// ErrNoPreamble is returned by Read before ReadPreamble has succeeded, and by Write before
// WritePreamble: a frame cannot be interpreted, or written, without its stream's type.
// It is a programming error, not a peer's, so it is not a *ProtocolError.
var ErrNoPreamble = errors.New("wire: preamble not yet read or written")

// millis converts d to whole milliseconds for the wire, rounding up so that a positive
// duration never becomes 0 ("no delay").
func millis(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

// maxMillis keeps fromMillis from overflowing time.Duration (about 292 years).
const maxMillis = int64(1<<63-1) / int64(time.Millisecond)

// fromMillis converts a millisecond field from the wire, rejecting values no sane peer
// sends, so that a negative or overflowing delay cannot reach a timer.
func fromMillis(field string, ms int64) (time.Duration, error) {
	if ms < 0 || ms > maxMillis {
		return 0, fmt.Errorf("%s out of range: %d", field, ms)
	}
	return time.Duration(ms) * time.Millisecond, nil
}
