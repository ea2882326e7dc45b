package wireotel_test

import (
	"bytes"
	"context"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"streamspace.dev/libs/wire"
	"streamspace.dev/libs/wire/wireotel"
)

func TestTraceContextCrossesTheWire(t *testing.T) {
	t.Parallel()
	ts, err := trace.ParseTraceState("vendor=abc")
	if err != nil {
		t.Fatal(err)
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID:     trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
		TraceFlags: trace.FlagsSampled,
		TraceState: ts,
		Remote:     true,
	})
	ctx := trace.ContextWithSpanContext(context.Background(), sc)

	var buf bytes.Buffer
	w := wire.NewWriter(&buf)
	if err := w.WritePreamble(wire.StreamControl); err != nil {
		t.Fatal(err)
	}
	if err := wireotel.Write(ctx, w, &wire.Heartbeat{Seq: 1}); err != nil {
		t.Fatal(err)
	}
	if err := wireotel.Write(context.Background(), w, &wire.Heartbeat{Seq: 2}); err != nil {
		t.Fatal(err)
	}

	r := wire.NewReader(&buf, 0)
	if _, err := r.ReadPreamble(); err != nil {
		t.Fatal(err)
	}
	got, _, err := wireotel.Read(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	if gsc := trace.SpanContextFromContext(got); !gsc.Equal(sc) {
		t.Fatalf("span context %+v, want %+v", gsc, sc)
	}
	got, _, err = wireotel.Read(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	if trace.SpanContextFromContext(got).IsValid() {
		t.Fatal("a message sent outside a trace carried one")
	}
}

func TestInjectFormatsW3C(t *testing.T) {
	t.Parallel()
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, TraceFlags: trace.FlagsSampled,
	})
	var env wire.Envelope
	wireotel.Inject(trace.ContextWithSpanContext(context.Background(), sc), &env)
	if want := "00-01000000000000000000000000000000-0200000000000000-01"; env.TraceParent != want {
		t.Fatalf("traceparent %q, want %q", env.TraceParent, want)
	}
}

func TestExtractIgnoresGarbage(t *testing.T) {
	t.Parallel()
	ctx := wireotel.Extract(context.Background(), wire.Envelope{TraceParent: "zz-not-a-trace"})
	if trace.SpanContextFromContext(ctx).IsValid() {
		t.Fatal("garbage traceparent produced a span context")
	}
}
