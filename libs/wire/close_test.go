package wire

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestCloseCodes pins the published values and their retry policy: both the agent and
// the gateway read them from here, so a change is a protocol change.
func TestCloseCodes(t *testing.T) {
	t.Parallel()
	cases := []struct {
		code      CloseCode
		value     uint64
		name      string
		permanent bool
	}{
		{CloseNormal, 0x0, "normal", false},
		{CloseProtocol, 0x1, "protocol", false},
		{CloseSuperseded, 0x2, "superseded", false},
		{CloseRevoked, 0x3, "revoked", true},
		{CloseGoingAway, 0x4, "going away", false},
		{CloseForbidden, 0x5, "forbidden", true},
		{CloseUnavailable, 0x6, "unavailable", false},
	}
	for _, tc := range cases {
		if uint64(tc.code) != tc.value || tc.code.String() != tc.name || !tc.code.Known() {
			t.Errorf("%v: value 0x%x, name %q, known %v", tc.code, uint64(tc.code), tc.code.String(), tc.code.Known())
		}
		if tc.code.Permanent() != tc.permanent || tc.code.Retryable() == tc.permanent {
			t.Errorf("%v: permanent %v, retryable %v; want permanent %v", tc.code, tc.code.Permanent(), tc.code.Retryable(), tc.permanent)
		}
	}
	if len(cases) != len(closeCodes) {
		t.Errorf("the test covers %d codes, the package defines %d", len(cases), len(closeCodes))
	}
	// A code from a newer peer is retryable: only an explicit "never come back" stops
	// the agent.
	for _, c := range []CloseCode{0x7, 0x100, 1<<62 - 1} {
		if c.Known() || c.Permanent() || !c.Retryable() || !strings.HasPrefix(c.String(), "close-code(") {
			t.Errorf("unknown %v: known %v, permanent %v", c, c.Known(), c.Permanent())
		}
	}
}

func TestCloseCodeForVersion(t *testing.T) {
	t.Parallel()
	cases := []struct {
		code     CloseCode
		accepted Version
		want     CloseCode
	}{
		{CloseUnavailable, Version{1, 1}, CloseUnavailable},
		{CloseUnavailable, Version{1, 9}, CloseUnavailable},
		{CloseUnavailable, Version{1, 0}, CloseGoingAway}, // a 1.0 agent never sees 0x6
		{CloseUnavailable, Version{}, CloseGoingAway},     // nothing negotiated yet
		{CloseRevoked, Version{1, 0}, CloseRevoked},
		{CloseRevoked, Version{}, CloseRevoked},
		{CloseNormal, Version{1, 0}, CloseNormal},
		{0x42, Version{1, 0}, 0x42},
	}
	for _, tc := range cases {
		if got := tc.code.For(tc.accepted); got != tc.want {
			t.Errorf("%v.For(%v) = %v, want %v", tc.code, tc.accepted, got, tc.want)
		}
	}
}

// TestVersion10StaysReadable decodes what a 1.0 peer writes: minors only add, so every
// 1.0 encoding must keep decoding to the same value (absent 1.1 fields as zero values).
func TestVersion10StaysReadable(t *testing.T) {
	t.Parallel()
	for pre, v := range map[string]Version{"f5535357010001": {1, 0}, "f5535357010101": {1, 1}} {
		raw, _ := hex.DecodeString(pre)
		p, err := NewReader(bytes.NewReader(raw), 0).ReadPreamble()
		if err != nil || p != (Preamble{Version: v, Stream: StreamControl}) {
			t.Fatalf("%s control preamble: %+v, %v", v, p, err)
		}
	}
	// hello.golden is a 1.0 agent's Hello: no tags, no applied checksum.
	b, err := os.ReadFile(filepath.Join("testdata", "hello.golden"))
	if err != nil {
		t.Fatal(err)
	}
	prefix, payload, _ := strings.Cut(strings.TrimSuffix(string(b), "\n"), "\n")
	lp, _ := hex.DecodeString(prefix)
	env := decodeOne(t, StreamControl, append(lp, payload...))
	h := env.Message.(*Hello)
	if h.Protocol != (Version{1, 0}) || h.Tags != nil || h.AppliedChecksum != "" {
		t.Fatalf("1.0 hello decodes to %+v", h)
	}
	if v, err := Negotiate(h.Protocol); err != nil || v != (Version{1, 0}) {
		t.Fatalf("Negotiate(1.0) = %v, %v", v, err)
	}
	// And a 1.1 Hello read by a reader that only knows the 1.0 fields keeps them.
	var v10 struct {
		AgentID      AgentID  `json:"agent_id"`
		Protocol     Version  `json:"protocol"`
		Capabilities []string `json:"capabilities"`
		Capacity     Capacity `json:"capacity"`
	}
	b, err = os.ReadFile(filepath.Join("testdata", "hello_1_1.golden"))
	if err != nil {
		t.Fatal(err)
	}
	_, payload, _ = strings.Cut(strings.TrimSuffix(string(b), "\n"), "\n")
	var env11 struct{ Body json.RawMessage }
	if err := json.Unmarshal([]byte(payload), &env11); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(env11.Body, &v10); err != nil {
		t.Fatal(err)
	}
	if v10.AgentID != "agt_7f3k2m" || !reflect.DeepEqual(v10.Capabilities, []string{"hibernate"}) || v10.Capacity.Sessions != 2 {
		t.Fatalf("a 1.0 reader sees %+v", v10)
	}
}
