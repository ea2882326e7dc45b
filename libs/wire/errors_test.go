package wire

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"

	"streamspace.dev/libs/apperr"
)

func TestALPN(t *testing.T) {
	t.Parallel()
	if got := SupportedALPNs(); !slices.Equal(got, []string{"streamspace-agent/1"}) || got[0] != ALPN {
		t.Fatalf("SupportedALPNs() = %q", got)
	}
	for _, p := range SupportedALPNs() {
		m, err := ParseALPN(p)
		if err != nil || !SupportedMajor(m) || ALPNFor(m) != p {
			t.Fatalf("%q: %d, %v", p, m, err)
		}
	}
	cases := []struct {
		in   string
		want uint8
		ok   bool
	}{
		{"streamspace-agent/1", 1, true},
		{"streamspace-agent/2", 2, true},
		{"streamspace-agent/255", 255, true},
		{"streamspace-agent/256", 0, false},
		{"streamspace-agent/01", 0, false},
		{"streamspace-agent/0", 0, false},
		{"streamspace-agent/", 0, false},
		{"streamspace-agent/1.0", 0, false},
		{"streamspace-agent/+1", 0, false},
		{"streamspace-agent/1 ", 0, false},
		{"streamspace-agent/1000000000000000000001", 0, false},
		{"Streamspace-agent/1", 0, false},
		{"h3", 0, false},
		{"", 0, false},
	}
	for _, tc := range cases {
		m, err := ParseALPN(tc.in)
		if (err == nil) != tc.ok || m != tc.want {
			t.Errorf("ParseALPN(%q) = %d, %v; want %d ok=%v", tc.in, m, err, tc.want, tc.ok)
		}
		if err != nil && !IsKind(err, KindBadALPN) {
			t.Errorf("ParseALPN(%q): error of the wrong kind: %v", tc.in, err)
		}
	}
}

func TestNegotiate(t *testing.T) {
	t.Parallel()
	if v, err := Negotiate(Version{1, Minor + 3}); err != nil || v != Current {
		t.Errorf("newer minor: %v, %v", v, err)
	}
	if v, err := Negotiate(Version{1, 0}); err != nil || v != (Version{1, 0}) {
		t.Errorf("oldest minor: %v, %v", v, err)
	}
	_, err := Negotiate(Version{2, 0})
	if retry, _ := Retryable(err); retry || !errors.Is(err, &Error{Code: CodeUnsupportedVersion}) {
		t.Errorf("unsupported major: %v (retry %v)", err, retry)
	}
}

func TestRetryable(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		err   error
		retry bool
		after time.Duration
	}{
		{"nil", nil, false, 0},
		{"shutting down", fmt.Errorf("dial: %w", context.Canceled), false, 0},
		{"timeout", context.DeadlineExceeded, true, 0},
		{"transport EOF", io.EOF, true, 0},
		{"unknown transport error", errors.New("quic: idle timeout"), true, 0},
		{"permanent wire error", &Error{Code: CodeForbidden, Message: "revoked", Permanent: true, RetryAfter: time.Hour}, false, 0},
		{"retryable wire error with hint", fmt.Errorf("hello: %w", &Error{Code: CodeUnavailable, RetryAfter: 5 * time.Second}), true, 5 * time.Second},
		{"retryable wire error without hint", &Error{Code: CodeInternal}, true, 0},
		{"negative hint from a bad constructor", &Error{Code: CodeInternal, RetryAfter: -time.Second}, true, 0},
		{"unsupported version", &ProtocolError{Kind: KindUnsupportedVersion}, false, 0},
		{"bad ALPN", &ProtocolError{Kind: KindBadALPN}, false, 0},
		{"malformed frame", fmt.Errorf("control: %w", &ProtocolError{Kind: KindMalformed}), true, 0},
		{"apperr forbidden", apperr.New(apperr.Forbidden, "no"), false, 0},
		{"apperr rate limited", &apperr.Error{Code: apperr.RateLimited, RetryAfter: time.Second}, true, time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			retry, after := Retryable(tc.err)
			if retry != tc.retry || after != tc.after {
				t.Fatalf("Retryable = %v, %v; want %v, %v", retry, after, tc.retry, tc.after)
			}
		})
	}
}

func TestErrorOf(t *testing.T) {
	t.Parallel()
	we := &Error{Code: CodeConflict, Message: "x"}
	cases := []struct {
		name string
		err  error
		want *Error
	}{
		{"nil", nil, nil},
		{"wire error passes through", fmt.Errorf("a: %w", we), we},
		{"apperr keeps code and retry", apperr.Wrap(errors.New("pgx: secret"), apperr.Unavailable, "db down"),
			&Error{Code: CodeUnavailable, Message: "db down"}},
		{"apperr permanent by code", apperr.New(apperr.NotFound, "no session %s", "s1"),
			&Error{Code: CodeNotFound, Message: "no session s1", Permanent: true}},
		{"protocol error", &ProtocolError{Kind: KindMalformed, Detail: "envelope"},
			&Error{Code: CodeProtocol, Message: "wire: malformed frame: envelope"}},
		{"version mismatch", &ProtocolError{Kind: KindUnsupportedVersion},
			&Error{Code: CodeUnsupportedVersion, Message: "wire: unsupported version", Permanent: true}},
		{"uncoded error hides its text", errors.New("open /etc/streamspace/key.pem: permission denied"),
			&Error{Code: CodeInternal, Message: "internal error"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := ErrorOf(tc.err)
			if (got == nil) != (tc.want == nil) || got != nil && *got != *tc.want {
				t.Fatalf("ErrorOf = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// Every apperr code must be a wire code with the same spelling, so business errors cross
// the tunnel unchanged.
func TestAppErrCodesAreWireCodes(t *testing.T) {
	t.Parallel()
	wireCodes := map[Code]bool{CodeInvalid: true, CodeUnauthenticated: true, CodeForbidden: true,
		CodeNotFound: true, CodeConflict: true, CodePreconditionFailed: true, CodeQuotaExceeded: true,
		CodeRateLimited: true, CodeUnavailable: true, CodeInternal: true}
	for _, c := range apperr.Codes {
		if !wireCodes[Code(c)] {
			t.Errorf("apperr code %s has no wire code", c)
		}
	}
}

func TestErrorIsMatchesByCode(t *testing.T) {
	t.Parallel()
	err := fmt.Errorf("renew: %w", &Error{Code: CodeRateLimited, Message: "slow down"})
	if !errors.Is(err, &Error{Code: CodeRateLimited}) || errors.Is(err, &Error{Code: CodeInternal}) {
		t.Fatal("errors.Is by code")
	}
	perr := fmt.Errorf("x: %w", &ProtocolError{Kind: KindTruncated, Err: io.ErrUnexpectedEOF})
	if !errors.Is(perr, &ProtocolError{Kind: KindTruncated}) || !errors.Is(perr, io.ErrUnexpectedEOF) {
		t.Fatal("errors.Is on a ProtocolError")
	}
}

func TestRetryAfterRoundsUpToMilliseconds(t *testing.T) {
	t.Parallel()
	for in, want := range map[time.Duration]time.Duration{
		time.Nanosecond:                  time.Millisecond,
		time.Millisecond:                 time.Millisecond,
		1500 * time.Microsecond:          2 * time.Millisecond,
		0:                                0,
		-time.Second:                     0,
		90*time.Second + time.Nanosecond: 90*time.Second + time.Millisecond,
	} {
		env := decodeOne(t, StreamControl, encode(t, StreamControl, Envelope{Message: &Error{Code: CodeUnavailable, RetryAfter: in}})[PreambleSize:])
		if got := env.Message.(*Error).RetryAfter; got != want {
			t.Errorf("RetryAfter %v arrives as %v, want %v", in, got, want)
		}
	}
}
