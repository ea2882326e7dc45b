package tunnel

import (
	"errors"
	"fmt"
	"testing"

	"github.com/quic-go/quic-go"

	"streamspace.dev/libs/wire"
)

func TestClassifyCloseCodes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		code   wire.CloseCode
		remote bool
		retry  bool
		want   wire.Code // the wire code classify adds, if any
	}{
		{wire.CloseNormal, true, true, ""},
		{wire.CloseProtocol, true, true, ""},
		{wire.CloseSuperseded, true, true, ""},
		{wire.CloseRevoked, true, false, wire.CodeForbidden},
		{wire.CloseGoingAway, true, true, ""},
		{wire.CloseForbidden, true, false, wire.CodeForbidden},
		{wire.CloseUnavailable, true, true, wire.CodeUnavailable},
		{0x7f, true, true, ""},               // from a newer gateway: retryable
		{wire.CloseRevoked, false, true, ""}, // our own close says nothing about the gateway
	} {
		err := classify(fmt.Errorf("reading: %w", &quic.ApplicationError{Remote: tc.remote, ErrorCode: quic.ApplicationErrorCode(tc.code), ErrorMessage: "x"}))
		if retry, _ := wire.Retryable(err); retry != tc.retry {
			t.Errorf("%v (remote %v): retryable %v, want %v (%v)", tc.code, tc.remote, retry, tc.retry, err)
		}
		we, ok := errors.AsType[*wire.Error](err)
		if (tc.want == "") == ok || (ok && we.Code != tc.want) {
			t.Errorf("%v (remote %v): wire error %v, want code %q", tc.code, tc.remote, we, tc.want)
		}
		if _, refused := errors.AsType[*RefusedError](err); refused {
			t.Errorf("%v: a close code is not a certificate refusal", tc.code)
		}
	}
}
