package wire

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current encoder")

// The golden files pin the exact bytes on the wire. A frame's file holds two lines: the
// 4-byte length prefix in hex, then the JSON payload verbatim. The preamble's file holds
// its 7 bytes in hex. Changing an existing file is a protocol change: see PROTOCOL.md,
// "Versioning", before running -update.
func TestGolden(t *testing.T) {
	t.Parallel()
	for _, s := range StreamTypes() {
		t.Run("preamble_"+s.String(), func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			if err := NewWriter(&buf).WritePreamble(s); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", "preamble_"+strings.ReplaceAll(s.String(), "-", "_")+".golden")
			got := hex.EncodeToString(buf.Bytes()) + "\n"
			want := golden(t, path, got)
			raw, err := hex.DecodeString(strings.TrimSpace(want))
			if err != nil {
				t.Fatal(err)
			}
			p, err := NewReader(bytes.NewReader(raw), 0).ReadPreamble()
			if err != nil || p != (Preamble{Version: Current, Stream: s}) {
				t.Fatalf("golden preamble decodes to %+v, %v", p, err)
			}
		})
	}
	for _, tc := range samples {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			frame := encode(t, tc.stream, tc.env)[PreambleSize:]
			got := hex.EncodeToString(frame[:4]) + "\n" + string(frame[4:]) + "\n"
			want := golden(t, filepath.Join("testdata", tc.name+".golden"), got)

			// Decode the golden bytes, not the fresh ones: old encodings must stay readable.
			prefix, payload, ok := strings.Cut(strings.TrimSuffix(want, "\n"), "\n")
			lp, err := hex.DecodeString(prefix)
			if !ok || err != nil || len(lp) != 4 || int(binary.BigEndian.Uint32(lp)) != len(payload) {
				t.Fatalf("golden file is not prefix + payload (prefix %q, payload %d bytes)", prefix, len(payload))
			}
			env := decodeOne(t, tc.stream, append(lp, payload...))
			if !reflect.DeepEqual(env, tc.env) {
				t.Fatalf("golden decodes to\n%#v\nwant\n%#v", env.Message, tc.env.Message)
			}
		})
	}
}

// golden compares got with the file at path (or rewrites it under -update) and returns
// the file's content.
func golden(t *testing.T, path, got string) string {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return got
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run TestGolden -update to create it)", err)
	}
	if string(want) != got {
		t.Fatalf("%s differs from the encoder:\n got: %s\nwant: %s", path, got, want)
	}
	return string(want)
}

func TestEveryTypeHasASample(t *testing.T) {
	t.Parallel()
	seen := map[MessageType]bool{}
	for _, s := range samples {
		seen[s.env.Message.Type()] = true
		if !AllowedOn(s.env.Message.Type(), s.stream) {
			t.Errorf("sample %s sits on a %s stream, where it is not allowed", s.name, s.stream)
		}
	}
	for _, mt := range Types() {
		if !seen[mt] {
			t.Errorf("message type %s has no sample (and so no golden file)", mt)
		}
		if _, ok := registry[mt]; !ok {
			t.Errorf("Types lists %s, the registry does not", mt)
		}
		if got := registry[mt].new().Type(); got != mt {
			t.Errorf("registry[%s] makes a %s", mt, got)
		}
	}
	if len(Types()) != len(registry) {
		t.Errorf("Types lists %d types, the registry has %d", len(Types()), len(registry))
	}
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	type tcase struct {
		name   string
		stream StreamType
		env    Envelope
	}
	cases := []tcase{
		// Minimal values: omitted optional fields must come back as their zero values.
		{"minimal hello", StreamControl, Envelope{Message: &Hello{AgentID: "a", Protocol: Version{1, 0}}}},
		{"empty heartbeat", StreamControl, Envelope{Message: &Heartbeat{}}},
		{"empty partial push", StreamDesiredState, Envelope{Message: &DesiredState{Assignments: []Assignment{}}}},
		{"multi-part push", StreamDesiredState, Envelope{Message: &DesiredState{Full: true, More: true, Assignments: sampleAssignments(3)}}},
		{"delete without spec", StreamDesiredState, Envelope{Message: &DesiredState{Assignments: []Assignment{
			{SessionID: "s", TenantID: "acmecorpxyz2", Generation: 9, Desired: DesiredDeleted}}}}},
		{"empty status report", StreamControl, Envelope{Message: &StatusReport{Sessions: []SessionStatus{}}}},
		{"session accepted", StreamSession, Envelope{Message: &Ack{SessionID: "s"}}},
		{"session refused", StreamSession, Envelope{Message: &Error{Code: CodeNotFound, Message: "no such session", Permanent: true}}},
		{"retry hint", StreamCert, Envelope{Message: &Error{Code: CodeUnavailable, Message: "CA busy", RetryAfter: 1500 * 1e6}}},
		{"non-ASCII and HTML in strings", StreamControl, Envelope{TraceState: "k=v<&>", Message: &Goodbye{Reason: "shutdown", Message: "Tschüss <b>&</b> \u2028\x01"}}},
	}
	for _, s := range samples {
		cases = append(cases, tcase{"sample " + s.name, s.stream, s.env})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := decodeOne(t, tc.stream, encode(t, tc.stream, tc.env)[PreambleSize:])
			if !reflect.DeepEqual(got, tc.env) {
				t.Fatalf("round trip changed the envelope:\n got %#v\nwant %#v", got.Message, tc.env.Message)
			}
		})
	}
}

// encode returns the preamble for stream followed by env's frame.
func encode(t testing.TB, stream StreamType, env Envelope) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := NewWriter(&buf)
	if err := w.WritePreamble(stream); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteEnvelope(env); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// decodeOne reads exactly one envelope from frame on a stream of the given type, and
// checks that nothing follows it.
func decodeOne(t testing.TB, stream StreamType, frame []byte) Envelope {
	t.Helper()
	p, _ := Preamble{Version: Current, Stream: stream}.AppendBinary(nil)
	r := NewReader(bytes.NewReader(append(p, frame...)), 0)
	if _, err := r.ReadPreamble(); err != nil {
		t.Fatal(err)
	}
	env, err := r.ReadEnvelope()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Read(); err == nil || err.Error() != "EOF" {
		t.Fatalf("after one frame: %v, want EOF", err)
	}
	return env
}

// StreamTypes lists the known stream types, for tests.
func StreamTypes() []StreamType {
	var out []StreamType
	for s := StreamType(0); s < 255; s++ {
		if s.Known() {
			out = append(out, s)
		}
	}
	return out
}
