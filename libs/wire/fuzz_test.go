package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime/metrics"
	"testing"
)

func FuzzReadPreamble(f *testing.F) {
	for _, s := range StreamTypes() {
		f.Add(preamble(s))
	}
	f.Add([]byte(Signature + "\x02\x00\x01"))
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := NewReader(bytes.NewReader(in), 0)
		p, err := r.ReadPreamble()
		if err != nil {
			var pe *ProtocolError
			if err != io.EOF && !errors.As(err, &pe) {
				t.Fatalf("untyped error %T: %v", err, err)
			}
			if _, err := r.Read(); !errors.Is(err, ErrNoPreamble) {
				t.Fatalf("Read after a failed preamble: %v", err)
			}
			return
		}
		if len(in) < PreambleSize || !SupportedMajor(p.Version.Major) || !p.Stream.Known() {
			t.Fatalf("accepted %x as %+v", in, p)
		}
		if out, _ := p.AppendBinary(nil); !bytes.Equal(out, in[:PreambleSize]) {
			t.Fatalf("%x re-encodes as %x", in[:PreambleSize], out)
		}
	})
}

// fuzzMaxSize is small so that the fuzzer reaches the oversized path with short inputs.
const fuzzMaxSize = 4096

// countingReader counts the bytes a Reader takes from the stream.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// FuzzRead feeds arbitrary bytes after a valid preamble of each stream type. It checks
// that Read never panics, reports every failure as a typed error, allocates in proportion
// to the bytes that actually arrived (never to a length prefix), and that every message it
// accepts re-encodes to a fixed point.
func FuzzRead(f *testing.F) {
	for _, s := range samples {
		f.Add(uint8(s.stream), encode(f, s.stream, s.env)[PreambleSize:])
	}
	f.Add(uint8(StreamControl), frame(`{"type":"teleport","body":{}}`))
	f.Add(uint8(StreamControl), []byte{0xff, 0xff, 0xff, 0xff})
	f.Add(uint8(StreamControl), append(binary.BigEndian.AppendUint32(nil, fuzzMaxSize), "{}"...))
	f.Add(uint8(StreamDesiredState), frame(`{"type":"desired_state","body":{"full":true,"assignments":[{},{}]}}`))
	f.Add(uint8(StreamSession), append(frame(`{"type":"session_stream_header","body":{"session_id":"s","port":1}}`), "RFB 003.008\n"...))

	// runtime/metrics, unlike runtime.ReadMemStats, does not stop the world, which keeps
	// the fuzzer fast enough to explore.
	ms := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	allocs := func() uint64 { metrics.Read(ms); return ms[0].Value.Uint64() }
	f.Fuzz(func(t *testing.T, st uint8, in []byte) {
		stream := StreamType(st%4 + 1)
		src := &countingReader{r: bytes.NewReader(append(preamble(stream), in...))}
		r := NewReader(src, fuzzMaxSize)
		if _, err := r.ReadPreamble(); err != nil {
			t.Fatal(err)
		}
		for range 64 {
			alloc0, read0 := allocs(), src.n
			env, err := r.ReadEnvelope()
			// The frame buffer is the only allocation a length prefix could drive; its bound
			// is exact. The heap counter is process-wide, and the fuzzing engine allocates
			// beside us, so its bound is loose: it catches trusting a prefix (megabytes or
			// gigabytes), not JSON's few hundred bytes per input byte. The precise
			// measurement is TestLengthPrefixIsNotTrusted.
			if got, limit := allocs()-alloc0, uint64(512*(src.n-read0)+1<<20); got > limit {
				t.Fatalf("Read allocated %d bytes for %d input bytes (limit %d)", got, src.n-read0, limit)
			}
			if cap(r.buf) > fuzzMaxSize {
				t.Fatalf("frame buffer of %d bytes, limit %d", cap(r.buf), fuzzMaxSize)
			}
			if err == io.EOF {
				return
			}
			if err != nil {
				var pe *ProtocolError
				if !errors.As(err, &pe) || pe.Kind == 0 {
					t.Fatalf("untyped error %T: %v", err, err)
				}
				if env.Message != nil {
					t.Fatal("a failed Read returned a message")
				}
				if pe.Kind == KindOversized || pe.Kind == KindTruncated {
					return // framing is lost; the caller closes the stream
				}
				continue
			}
			if !AllowedOn(env.Message.Type(), stream) {
				t.Fatalf("accepted %s on a %s stream", env.Message.Type(), stream)
			}
			checkFixedPoint(t, stream, env)
		}
	})
}

// checkFixedPoint re-encodes an accepted envelope, decodes it and encodes it again: the two
// encodings must match. (The first may differ from the input: whitespace, escapes, key
// order, unknown fields.)
func checkFixedPoint(t *testing.T, stream StreamType, env Envelope) {
	t.Helper()
	enc := func(e Envelope) []byte {
		var buf bytes.Buffer
		w := NewWriterSize(&buf, MaxSizeLimit) // re-encoding may grow: invalid UTF-8 becomes U+FFFD
		if err := w.WritePreamble(stream); err != nil {
			t.Fatal(err)
		}
		if err := w.WriteEnvelope(e); err != nil {
			t.Fatalf("cannot re-encode an accepted %s: %v", e.Message.Type(), err)
		}
		return buf.Bytes()
	}
	first := enc(env)
	r := NewReader(bytes.NewReader(first), MaxSizeLimit)
	if _, err := r.ReadPreamble(); err != nil {
		t.Fatal(err)
	}
	again, err := r.ReadEnvelope()
	if err != nil {
		t.Fatalf("re-encoded %s does not decode: %v\n%s", env.Message.Type(), err, first)
	}
	if second := enc(again); !bytes.Equal(first, second) {
		t.Fatalf("encoding is not a fixed point:\n%s\n%s", first, second)
	}
}

func FuzzParseALPN(f *testing.F) {
	for _, p := range SupportedALPNs() {
		f.Add(p)
	}
	for _, s := range []string{"streamspace-agent/01", "streamspace-agent/256", "h3", "", "streamspace-agent/1\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseALPN(s)
		if err != nil {
			if !IsKind(err, KindBadALPN) {
				t.Fatalf("error of the wrong kind: %v", err)
			}
			return
		}
		// Only the canonical spelling of a major is accepted.
		if ALPNFor(m) != s || m == 0 {
			t.Fatalf("ParseALPN(%q) = %d, but that major is spelled %q", s, m, ALPNFor(m))
		}
	})
}
