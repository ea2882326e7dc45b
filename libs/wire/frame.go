package wire

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"unicode/utf8"
)

// Frame size limits. A frame is a 4-byte big-endian length followed by that many bytes of
// JSON envelope; the limits count the JSON bytes.
const (
	// DefaultMaxSize is the frame limit when none is given: large enough for thousands of
	// typical assignments per DesiredState part (100 take 26 KB), small enough that a hostile or
	// broken peer cannot make a reader hold much memory per stream.
	DefaultMaxSize = 1 << 20
	// MaxSizeLimit is the largest limit a Reader or Writer accepts; larger requests are
	// clamped to it. Split big sets instead (DesiredState.More).
	MaxSizeLimit = 16 << 20
)

// growStep bounds how much a Reader allocates ahead of the bytes that have actually
// arrived: a peer that announces a 1 MiB frame and sends ten bytes costs 16 KiB, not
// 1 MiB, which matters with thousands of streams per gateway.
const growStep = 16 << 10

// keepBuffer is the largest frame buffer a Reader keeps between frames. Bigger ones are
// dropped after use so that one large DesiredState does not pin a megabyte to every
// idle control stream.
const keepBuffer = 64 << 10

func clampSize(n int) int {
	if n <= 0 {
		return DefaultMaxSize
	}
	return min(n, MaxSizeLimit)
}

// Envelope is one frame's content: a Message and the W3C trace context it travels with.
// On the wire it is the JSON object {"type", "traceparent", "tracestate", "body"};
// see PROTOCOL.md. TraceParent and TraceState are plain strings so that this package
// needs no tracing library; package wireotel fills and reads them.
type Envelope struct {
	TraceParent string
	TraceState  string
	Message     Message
}

// envelopeJSON is the decoding form of an envelope.
type envelopeJSON struct {
	Type        MessageType     `json:"type"`
	TraceParent string          `json:"traceparent"`
	TraceState  string          `json:"tracestate"`
	Body        json.RawMessage `json:"body"`
}

// Writer writes a stream's preamble and frames. It is safe for concurrent use: one mutex
// serialises whole frames, so heartbeats and status reports from different goroutines
// never interleave. Encoding happens outside the lock.
type Writer struct {
	maxSize int

	mu     sync.Mutex
	w      io.Writer
	stream StreamType // 0 until WritePreamble
	err    error      // sticky: after a failed write the stream's framing is unknown
}

// NewWriter returns a Writer on w that refuses messages larger than DefaultMaxSize, the
// limit every reader of version 1 accepts.
func NewWriter(w io.Writer) *Writer { return NewWriterSize(w, DefaultMaxSize) }

// NewWriterSize returns a Writer on w that refuses messages larger than maxSize bytes
// (DefaultMaxSize if maxSize <= 0, at most MaxSizeLimit). Only raise it for a peer known
// to read with at least that limit.
func NewWriterSize(w io.Writer, maxSize int) *Writer {
	return &Writer{w: w, maxSize: clampSize(maxSize)}
}

// WritePreamble writes the preamble for a stream of type s with this build's version.
// It must be the first write on the stream, exactly once.
func (w *Writer) WritePreamble(s StreamType) error {
	if !s.Known() {
		return fmt.Errorf("wire: cannot open a stream of unknown type %s", s)
	}
	var b [PreambleSize]byte
	p, _ := Preamble{Version: Current, Stream: s}.AppendBinary(b[:0])
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	if w.stream != 0 {
		return errors.New("wire: preamble already written")
	}
	if _, err := w.w.Write(p); err != nil {
		w.err = fmt.Errorf("wire: writing preamble: %w", err)
		return w.err
	}
	w.stream = s
	return nil
}

// Write writes msg in an envelope without trace context.
func (w *Writer) Write(msg Message) error { return w.WriteEnvelope(Envelope{Message: msg}) }

// WriteEnvelope writes one frame. It fails without writing anything if the message may
// not appear on this stream type (*ProtocolError KindUnexpectedType) or its encoding
// exceeds the size limit (KindOversized), so a bug on this side is reported here and not
// as a broken stream on the peer. After a failed write to the underlying writer every
// later call returns the same error.
func (w *Writer) WriteEnvelope(env Envelope) error {
	if env.Message == nil {
		return errors.New("wire: envelope has no message")
	}
	w.mu.Lock()
	stream, err := w.stream, w.err
	w.mu.Unlock()
	if err != nil {
		return err
	}
	if stream == 0 {
		return ErrNoPreamble
	}
	t := env.Message.Type()
	if !AllowedOn(t, stream) {
		return &ProtocolError{Kind: KindUnexpectedType, Type: t, Detail: fmt.Sprintf("%s may not be sent on a %s stream", t, stream)}
	}

	buf := bufPool.Get().(*bytes.Buffer)
	defer putBuf(buf)
	if err := encodeFrame(buf, env); err != nil {
		return err
	}
	frame := buf.Bytes()
	if n := len(frame) - 4; n > w.maxSize {
		return &ProtocolError{Kind: KindOversized, Type: t, Detail: fmt.Sprintf("%s encodes to %d bytes, limit %d", t, n, w.maxSize)}
	}
	binary.BigEndian.PutUint32(frame, uint32(len(frame)-4))

	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	// One Write per frame: a QUIC stream turns it into as few packets as possible.
	if _, err := w.w.Write(frame); err != nil {
		w.err = fmt.Errorf("wire: writing %s: %w", t, err)
		return w.err
	}
	return nil
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func putBuf(b *bytes.Buffer) {
	if b.Cap() <= keepBuffer {
		bufPool.Put(b)
	}
}

// encodeFrame writes a placeholder length and the envelope's JSON into buf. The envelope
// is assembled by hand, in a fixed key order, so the bytes are deterministic (the golden
// files pin them) and the body is encoded only once.
func encodeFrame(buf *bytes.Buffer, env Envelope) error {
	buf.Reset()
	buf.Write([]byte{0, 0, 0, 0})
	buf.WriteString(`{"type":`)
	appendJSONString(buf, string(env.Message.Type()))
	if env.TraceParent != "" {
		buf.WriteString(`,"traceparent":`)
		appendJSONString(buf, env.TraceParent)
	}
	if env.TraceState != "" {
		buf.WriteString(`,"tracestate":`)
		appendJSONString(buf, env.TraceState)
	}
	buf.WriteString(`,"body":`)
	enc := json.NewEncoder(buf)
	// HTML escaping protects JSON embedded in web pages; here it only makes specs and
	// golden files harder to read.
	enc.SetEscapeHTML(false)
	if err := enc.Encode(env.Message); err != nil {
		return fmt.Errorf("wire: encoding %s: %w", env.Message.Type(), err)
	}
	buf.Truncate(buf.Len() - 1) // Encode's trailing newline
	if bytes.HasSuffix(buf.Bytes(), []byte(`"body":null`)) {
		return fmt.Errorf("wire: encoding %s: nil message", env.Message.Type())
	}
	buf.WriteByte('}')
	return nil
}

// appendJSONString writes s as a JSON string. Type names and traceparents are plain ASCII,
// which takes the fast path; anything else goes through encoding/json.
func appendJSONString(buf *bytes.Buffer, s string) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' {
			b, _ := json.Marshal(s) // a string always encodes
			buf.Write(b)
			return
		}
	}
	buf.WriteByte('"')
	buf.WriteString(s)
	buf.WriteByte('"')
}

// Reader reads a stream's preamble and frames. It reads exactly the bytes of each frame
// and never buffers ahead, so after a session stream's SessionStreamHeader the underlying
// reader holds only raw session bytes. A Reader is not safe for concurrent use; a stream
// has one reader.
type Reader struct {
	r       io.Reader
	maxSize int
	pre     Preamble
	havePre bool
	hdr     [PreambleSize]byte
	buf     []byte
	skipped int
}

// NewReader returns a Reader on r that rejects frames longer than maxSize bytes
// (DefaultMaxSize if maxSize <= 0, at most MaxSizeLimit) before allocating for them.
func NewReader(r io.Reader, maxSize int) *Reader {
	return &Reader{r: r, maxSize: clampSize(maxSize)}
}

// ReadPreamble reads and checks the stream's preamble; it must come before Read. It
// returns io.EOF if the stream ends before its first byte, a *ProtocolError of
// KindBadPreamble if it ends inside the preamble or the signature is wrong, and the
// errors of ParsePreamble otherwise.
func (r *Reader) ReadPreamble() (Preamble, error) {
	if r.havePre {
		return r.pre, errors.New("wire: preamble already read")
	}
	if _, err := io.ReadFull(r.r, r.hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return Preamble{}, &ProtocolError{Kind: KindBadPreamble, Detail: "stream ended inside the preamble", Err: err}
		}
		return Preamble{}, err
	}
	p, err := ParsePreamble(r.hdr[:])
	if err != nil {
		return p, err
	}
	r.pre, r.havePre = p, true
	return p, nil
}

// Skipped returns how many frames of unknown type the Reader has skipped on a stream that
// skips them (see StreamType.SkipsUnknown), for a metric: a rising count means the peer
// is newer than this build.
func (r *Reader) Skipped() int { return r.skipped }

// Read returns the next message, dropping its trace context; see ReadEnvelope.
func (r *Reader) Read() (Message, error) {
	env, err := r.ReadEnvelope()
	return env.Message, err
}

// ReadEnvelope returns the next frame's envelope. At a clean end of stream (between
// frames) it returns io.EOF. Decoding failures are *ProtocolError values:
// KindTruncated (the stream ended inside a frame), KindOversized (the length prefix
// exceeds the limit; nothing is allocated for it), KindMalformed (not a valid envelope or
// message), KindUnknownType (a type this build does not know, on a strict stream) and
// KindUnexpectedType (a known type not allowed on this stream type). After
// KindTruncated or KindOversized the stream's framing is lost and the caller must close
// it; after the others the frame has been consumed and the caller may read on (strict
// streams should close anyway: see PROTOCOL.md). Transport errors are returned wrapped.
func (r *Reader) ReadEnvelope() (Envelope, error) {
	if !r.havePre {
		return Envelope{}, ErrNoPreamble
	}
	for {
		payload, err := r.readFrame()
		if err != nil {
			return Envelope{}, err
		}
		env, err := r.decode(payload)
		r.release()
		if err != nil && IsKind(err, KindUnknownType) && r.pre.Stream.SkipsUnknown() {
			r.skipped++
			continue
		}
		return env, err
	}
}

// readFrame reads one length-prefixed frame into r.buf.
func (r *Reader) readFrame() ([]byte, error) {
	var lp [4]byte
	if _, err := io.ReadFull(r.r, lp[:]); err != nil {
		switch {
		case err == io.EOF:
			return nil, io.EOF
		case errors.Is(err, io.ErrUnexpectedEOF):
			return nil, &ProtocolError{Kind: KindTruncated, Detail: "stream ended inside a length prefix", Err: err}
		}
		return nil, fmt.Errorf("wire: reading frame: %w", err)
	}
	n := binary.BigEndian.Uint32(lp[:])
	if uint64(n) > uint64(r.maxSize) {
		return nil, &ProtocolError{Kind: KindOversized, Detail: fmt.Sprintf("frame of %d bytes, limit %d", n, r.maxSize)}
	}
	if n == 0 {
		return nil, &ProtocolError{Kind: KindMalformed, Detail: "empty frame"}
	}
	// Grow with the bytes that actually arrive instead of trusting the prefix.
	buf := r.buf[:0]
	for len(buf) < int(n) {
		step := min(int(n)-len(buf), max(growStep, len(buf)))
		if cap(buf)-len(buf) < step {
			nb := make([]byte, len(buf), len(buf)+step)
			copy(nb, buf)
			buf = nb
		}
		m, err := io.ReadFull(r.r, buf[len(buf):len(buf)+step])
		buf = buf[:len(buf)+m]
		if err != nil {
			r.buf = buf
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, &ProtocolError{Kind: KindTruncated, Detail: fmt.Sprintf("stream ended after %d of %d frame bytes", len(buf), n), Err: io.ErrUnexpectedEOF}
			}
			return nil, fmt.Errorf("wire: reading frame: %w", err)
		}
	}
	r.buf = buf
	return buf, nil
}

// release drops a large frame buffer; decoding copies everything it keeps.
func (r *Reader) release() {
	if cap(r.buf) > keepBuffer {
		r.buf = nil
	}
}

// maxTypeInError bounds how much of an unknown type name an error repeats.
const maxTypeInError = 64

func (r *Reader) decode(payload []byte) (Envelope, error) {
	var ej envelopeJSON
	if err := json.Unmarshal(payload, &ej); err != nil {
		return Envelope{}, &ProtocolError{Kind: KindMalformed, Detail: "envelope", Err: err}
	}
	if ej.Type == "" {
		return Envelope{}, &ProtocolError{Kind: KindMalformed, Detail: "envelope has no type"}
	}
	k, ok := registry[ej.Type]
	if !ok {
		t := ej.Type
		if len(t) > maxTypeInError {
			t = t[:maxTypeInError]
		}
		return Envelope{}, &ProtocolError{Kind: KindUnknownType, Type: t, Detail: fmt.Sprintf("%q", t)}
	}
	if k.streams&(1<<r.pre.Stream) == 0 {
		return Envelope{}, &ProtocolError{Kind: KindUnexpectedType, Type: ej.Type, Detail: fmt.Sprintf("%s on a %s stream", ej.Type, r.pre.Stream)}
	}
	if len(ej.Body) == 0 || ej.Body[0] != '{' {
		return Envelope{}, &ProtocolError{Kind: KindMalformed, Type: ej.Type, Detail: "body is not a JSON object"}
	}
	msg := k.new()
	if err := json.Unmarshal(ej.Body, msg); err != nil {
		return Envelope{}, &ProtocolError{Kind: KindMalformed, Type: ej.Type, Detail: string(ej.Type), Err: err}
	}
	if v, ok := msg.(validator); ok {
		if err := v.validate(); err != nil {
			return Envelope{}, &ProtocolError{Kind: KindMalformed, Type: ej.Type, Detail: string(ej.Type), Err: err}
		}
	}
	return Envelope{TraceParent: ej.TraceParent, TraceState: ej.TraceState, Message: msg}, nil
}
