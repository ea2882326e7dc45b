package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
)

func preamble(s StreamType) []byte {
	p, _ := Preamble{Version: Current, Stream: s}.AppendBinary(nil)
	return p
}

// frame returns a length-prefixed frame around payload.
func frame(payload string) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(payload))), payload...)
}

func TestReadPreambleRejects(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		in   []byte
		kind Kind // 0: want io.EOF
	}{
		{"empty stream", nil, 0},
		{"truncated", []byte(Signature + "\x01"), KindBadPreamble},
		{"wrong signature", []byte("SSW\x00\x01\x00\x01"), KindBadPreamble},
		{"HTTP request", []byte("GET / HTTP/1.1\r\n"), KindBadPreamble},
		{"TLS record", []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00}, KindBadPreamble},
		{"unsupported major", []byte(Signature + "\x02\x00\x01"), KindUnsupportedVersion},
		{"major zero", []byte(Signature + "\x00\x00\x01"), KindUnsupportedVersion},
		{"unknown stream type", []byte(Signature + "\x01\x00\x09"), KindUnknownStreamType},
		{"stream type zero", []byte(Signature + "\x01\x00\x00"), KindUnknownStreamType},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := NewReader(bytes.NewReader(tc.in), 0)
			_, err := r.ReadPreamble()
			if tc.kind == 0 {
				if err != io.EOF {
					t.Fatalf("err %v, want io.EOF", err)
				}
			} else if !IsKind(err, tc.kind) {
				t.Fatalf("err %v, want kind %s", err, tc.kind)
			}
			if _, err := r.Read(); !errors.Is(err, ErrNoPreamble) {
				t.Fatalf("Read after a failed preamble: %v", err)
			}
		})
	}
}

func TestReadPreambleAcceptsNewerMinor(t *testing.T) {
	t.Parallel()
	p, err := NewReader(strings.NewReader(Signature+"\x01\x07\x02"), 0).ReadPreamble()
	if err != nil || p != (Preamble{Version{1, 7}, StreamDesiredState}) {
		t.Fatalf("%+v, %v", p, err)
	}
}

func TestReadRejects(t *testing.T) {
	t.Parallel()
	hb := `{"type":"heartbeat","body":{"seq":1,"capacity":{}}}`
	cases := []struct {
		name   string
		stream StreamType
		in     []byte
		kind   Kind
	}{
		{"garbage", StreamControl, frame("\x00\xff garbage"), KindMalformed},
		{"JSON but not an object", StreamControl, frame(`[1,2,3]`), KindMalformed},
		{"trailing bytes after the envelope", StreamControl, frame(hb + `{}`), KindMalformed},
		{"no type", StreamControl, frame(`{"body":{}}`), KindMalformed},
		{"no body", StreamControl, frame(`{"type":"heartbeat"}`), KindMalformed},
		{"null body", StreamControl, frame(`{"type":"heartbeat","body":null}`), KindMalformed},
		{"body of the wrong shape", StreamControl, frame(`{"type":"heartbeat","body":{"seq":"one"}}`), KindMalformed},
		{"negative seq", StreamControl, frame(`{"type":"heartbeat","body":{"seq":-1}}`), KindMalformed},
		{"unknown desired state", StreamDesiredState, frame(`{"type":"desired_state","body":{"full":true,"assignments":[{"session_id":"s","tenant_id":"t","generation":1,"desired":"exploded"}]}}`), KindMalformed},
		{"spec that is not an object", StreamDesiredState, frame(`{"type":"desired_state","body":{"assignments":[{"session_id":"s","tenant_id":"t","generation":1,"desired":"running","spec":[1]}]}}`), KindMalformed},
		{"negative generation", StreamDesiredState, frame(`{"type":"ack","body":{"session_id":"s","generation":-1}}`), KindMalformed},
		{"more on a partial push", StreamDesiredState, frame(`{"type":"desired_state","body":{"more":true,"assignments":[]}}`), KindMalformed},
		{"negative retry", StreamControl, frame(`{"type":"error","body":{"code":"unavailable","message":"x","retry_after_ms":-5}}`), KindMalformed},
		{"overflowing retry", StreamControl, frame(`{"type":"error","body":{"code":"unavailable","message":"x","retry_after_ms":9223372036854775807}}`), KindMalformed},
		{"error without code", StreamCert, frame(`{"type":"error","body":{"message":"x"}}`), KindMalformed},
		{"header without port", StreamSession, frame(`{"type":"session_stream_header","body":{"session_id":"s"}}`), KindMalformed},
		{"header port out of range", StreamSession, frame(`{"type":"session_stream_header","body":{"session_id":"s","port":70000}}`), KindMalformed},
		{"empty frame", StreamControl, frame(""), KindMalformed},
		{"unknown type on a strict stream", StreamDesiredState, frame(`{"type":"teleport","body":{}}`), KindUnknownType},
		{"hello on a desired-state stream", StreamDesiredState, frame(`{"type":"hello","body":{"agent_id":"a","protocol":{"major":1}}}`), KindUnexpectedType},
		{"desired state on the control stream", StreamControl, frame(`{"type":"desired_state","body":{"assignments":[]}}`), KindUnexpectedType},
		{"truncated length prefix", StreamControl, []byte{0, 0}, KindTruncated},
		{"truncated payload", StreamControl, frame(hb)[:20], KindTruncated},
		{"length prefix beyond the limit", StreamControl, binary.BigEndian.AppendUint32(nil, DefaultMaxSize+1), KindOversized},
		{"length prefix of 4 GiB", StreamControl, []byte{0xff, 0xff, 0xff, 0xff}, KindOversized},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := NewReader(bytes.NewReader(append(preamble(tc.stream), tc.in...)), 0)
			if _, err := r.ReadPreamble(); err != nil {
				t.Fatal(err)
			}
			msg, err := r.Read()
			if !IsKind(err, tc.kind) {
				t.Fatalf("got %v, %v; want kind %s", msg, err, tc.kind)
			}
			if msg != nil {
				t.Fatalf("a failed Read returned a message: %#v", msg)
			}
			var pe *ProtocolError
			if !errors.As(err, &pe) || !errors.Is(err, &ProtocolError{Kind: tc.kind}) {
				t.Fatal("errors.As/Is do not find the ProtocolError")
			}
		})
	}
}

func TestNullSpecMeansAbsent(t *testing.T) {
	t.Parallel()
	in := append(preamble(StreamDesiredState), frame(`{"type":"desired_state","body":{"assignments":[{"session_id":"s","tenant_id":"t","generation":1,"desired":"deleted","spec":null}]}}`)...)
	r := NewReader(bytes.NewReader(in), 0)
	if _, err := r.ReadPreamble(); err != nil {
		t.Fatal(err)
	}
	msg, err := r.Read()
	if err != nil {
		t.Fatal(err)
	}
	if spec := msg.(*DesiredState).Assignments[0].Spec; spec != nil {
		t.Fatalf("spec %q, want nil", spec)
	}
}

func TestControlStreamSkipsUnknownTypes(t *testing.T) {
	t.Parallel()
	in := preamble(StreamControl)
	in = append(in, frame(`{"type":"telemetry_v9","body":{"anything":[1,2,3]}}`)...)
	in = append(in, frame(`{"type":"heartbeat","body":{"seq":7,"capacity":{},"added_in_1_3":true}}`)...)
	r := NewReader(bytes.NewReader(in), 0)
	if _, err := r.ReadPreamble(); err != nil {
		t.Fatal(err)
	}
	msg, err := r.Read()
	if err != nil {
		t.Fatal(err)
	}
	if hb, ok := msg.(*Heartbeat); !ok || hb.Seq != 7 {
		t.Fatalf("got %#v", msg)
	}
	if r.Skipped() != 1 {
		t.Fatalf("Skipped() = %d", r.Skipped())
	}
}

func TestReaderLimitIsPerReader(t *testing.T) {
	t.Parallel()
	payload := `{"type":"heartbeat","body":{"seq":1,"capacity":{}}}`
	in := append(preamble(StreamControl), frame(payload)...)
	r := NewReader(bytes.NewReader(in), len(payload)-1)
	if _, err := r.ReadPreamble(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Read(); !IsKind(err, KindOversized) {
		t.Fatalf("err %v", err)
	}
	r = NewReader(bytes.NewReader(in), len(payload))
	if _, err := r.ReadPreamble(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Read(); err != nil {
		t.Fatalf("a frame of exactly the limit: %v", err)
	}
}

// allocated returns the bytes allocated while f runs. Tests using it must not be parallel.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// A huge length prefix must be rejected before anything is allocated for it, and a prefix
// within the limit must not make the reader allocate ahead of the bytes that arrive.
func TestLengthPrefixIsNotTrusted(t *testing.T) { //nolint:paralleltest // measures allocation
	cases := []struct {
		name  string
		in    []byte
		kind  Kind
		limit uint64
	}{
		{"4 GiB prefix", []byte{0xff, 0xff, 0xff, 0xff}, KindOversized, 64 << 10},
		{"limit+1 prefix", binary.BigEndian.AppendUint32(nil, DefaultMaxSize+1), KindOversized, 64 << 10},
		{"1 MiB announced, 10 bytes sent", append(binary.BigEndian.AppendUint32(nil, DefaultMaxSize), "0123456789"...), KindTruncated, 2 * growStep},
	}
	for _, tc := range cases {
		in := append(preamble(StreamControl), tc.in...)
		var err error
		n := allocated(func() {
			r := NewReader(bytes.NewReader(in), 0)
			if _, err = r.ReadPreamble(); err == nil {
				_, err = r.Read()
			}
		})
		if !IsKind(err, tc.kind) {
			t.Errorf("%s: err %v, want %s", tc.name, err, tc.kind)
		}
		if n > tc.limit {
			t.Errorf("%s: allocated %d bytes, limit %d", tc.name, n, tc.limit)
		}
	}
}

// The reader must stop exactly at the end of the SessionStreamHeader frame, because the
// caller pipes the rest of the stream as raw session bytes.
func TestSessionStreamReaderDoesNotReadAhead(t *testing.T) {
	t.Parallel()
	raw := "RFB 003.008\n" + strings.Repeat("\x00pixels", 1000)
	in := encode(t, StreamSession, Envelope{Message: &SessionStreamHeader{SessionID: "s", PortName: "vnc"}})
	src := bytes.NewReader(append(in, raw...))
	// OneByteReader would expose any read-ahead that io.ReadFull hides.
	r := NewReader(iotest.OneByteReader(src), 0)
	if p, err := r.ReadPreamble(); err != nil || p.Stream != StreamSession {
		t.Fatalf("%+v %v", p, err)
	}
	if _, err := r.Read(); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(src)
	if string(rest) != raw {
		t.Fatalf("the reader consumed %d raw bytes", len(raw)-len(rest))
	}
}

func TestWriterRefuses(t *testing.T) {
	t.Parallel()
	t.Run("before the preamble", func(t *testing.T) {
		t.Parallel()
		if err := NewWriter(io.Discard).Write(&Heartbeat{}); !errors.Is(err, ErrNoPreamble) {
			t.Fatal(err)
		}
	})
	t.Run("a second preamble", func(t *testing.T) {
		t.Parallel()
		w := NewWriter(io.Discard)
		if err := w.WritePreamble(StreamControl); err != nil {
			t.Fatal(err)
		}
		if err := w.WritePreamble(StreamControl); err == nil {
			t.Fatal("wrote two preambles")
		}
	})
	t.Run("an unknown stream type", func(t *testing.T) {
		t.Parallel()
		if err := NewWriter(io.Discard).WritePreamble(StreamType(99)); err == nil {
			t.Fatal("opened an unknown stream type")
		}
	})
	t.Run("a message the stream does not carry", func(t *testing.T) {
		t.Parallel()
		var buf bytes.Buffer
		w := NewWriter(&buf)
		if err := w.WritePreamble(StreamSession); err != nil {
			t.Fatal(err)
		}
		if err := w.Write(&Heartbeat{}); !IsKind(err, KindUnexpectedType) {
			t.Fatal(err)
		}
		if buf.Len() != PreambleSize {
			t.Fatal("wrote part of a refused frame")
		}
	})
	t.Run("an oversized message", func(t *testing.T) {
		t.Parallel()
		var buf bytes.Buffer
		w := NewWriterSize(&buf, 1000)
		if err := w.WritePreamble(StreamDesiredState); err != nil {
			t.Fatal(err)
		}
		if err := w.Write(&DesiredState{Assignments: sampleAssignments(10)}); !IsKind(err, KindOversized) {
			t.Fatal(err)
		}
		if buf.Len() != PreambleSize {
			t.Fatal("wrote part of a refused frame")
		}
	})
	t.Run("a nil message", func(t *testing.T) {
		t.Parallel()
		w := NewWriter(io.Discard)
		_ = w.WritePreamble(StreamControl)
		if err := w.Write(nil); err == nil {
			t.Fatal("wrote nil")
		}
		if err := w.Write((*Heartbeat)(nil)); err == nil {
			t.Fatal("wrote a nil *Heartbeat")
		}
	})
	t.Run("invalid spec JSON", func(t *testing.T) {
		t.Parallel()
		w := NewWriter(io.Discard)
		_ = w.WritePreamble(StreamDesiredState)
		err := w.Write(&DesiredState{Assignments: []Assignment{{SessionID: "s", TenantID: "t", Desired: DesiredRunning, Spec: []byte("{")}}})
		if err == nil {
			t.Fatal("wrote invalid JSON")
		}
	})
	t.Run("after a failed write, forever", func(t *testing.T) {
		t.Parallel()
		boom := errors.New("stream reset")
		fw := &failWriter{after: PreambleSize, err: boom}
		w := NewWriter(fw)
		if err := w.WritePreamble(StreamControl); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if err := w.Write(&Heartbeat{}); !errors.Is(err, boom) {
				t.Fatalf("err %v", err)
			}
		}
		if fw.calls != 2 {
			t.Fatalf("wrote to a broken stream again (%d calls)", fw.calls)
		}
	})
}

type failWriter struct {
	after, n, calls int
	err             error
}

func (f *failWriter) Write(p []byte) (int, error) {
	f.calls++
	if f.n+len(p) > f.after {
		return 0, f.err
	}
	f.n += len(p)
	return len(p), nil
}

// Frames written concurrently must arrive whole; run with -race.
func TestWriterIsSafeForConcurrentUse(t *testing.T) {
	t.Parallel()
	pr, pw := io.Pipe()
	w := NewWriter(pw)
	const writers, each = 8, 200
	go func() {
		if err := w.WritePreamble(StreamControl); err != nil {
			pw.CloseWithError(err)
			return
		}
		var wg sync.WaitGroup
		for g := range writers {
			wg.Go(func() {
				for i := range each {
					msg := Message(&Heartbeat{Seq: uint64(g*each + i)})
					if i%3 == 0 {
						msg = &StatusReport{Sessions: sampleStatuses(i % 7)}
					}
					if err := w.Write(msg); err != nil {
						pw.CloseWithError(err)
						return
					}
				}
			})
		}
		wg.Wait()
		pw.Close()
	}()
	r := NewReader(pr, 0)
	if _, err := r.ReadPreamble(); err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		_, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != writers*each {
		t.Fatalf("read %d frames, want %d", n, writers*each)
	}
}

func sampleStatuses(n int) []SessionStatus {
	out := make([]SessionStatus, n)
	for i := range out {
		out[i] = SessionStatus{SessionID: SessionID(strings.Repeat("s", i+1)), Phase: PhaseRunning, ObservedGeneration: int64(i)}
	}
	return out
}
