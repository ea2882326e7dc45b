package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// decodeLines parses one JSON object per line.
func decodeLines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %q is not JSON: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func TestLoggerAddsTraceIDsInsideSpanOnly(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	var buf bytes.Buffer
	logger := NewLogger(&buf, slog.LevelInfo)

	ctx, span := tp.Tracer("test").Start(context.Background(), "op")
	logger.InfoContext(ctx, "inside", "k", "v")
	logger.WithGroup("req").InfoContext(ctx, "grouped", "path", "/x")
	logger.With("a", 1).WithGroup("g").With("b", 2).InfoContext(ctx, "attrs then group")
	span.End()
	logger.InfoContext(context.Background(), "outside")
	logger.DebugContext(ctx, "below level")

	lines := decodeLines(t, &buf)
	if len(lines) != 4 {
		t.Fatalf("got %d lines, want 4:\n%s", len(lines), buf.String())
	}
	sc := span.SpanContext()
	for _, l := range lines[:3] {
		if l[TraceIDKey] != sc.TraceID().String() || l[SpanIDKey] != sc.SpanID().String() {
			t.Errorf("record %q: ids %v/%v, want %s/%s at the top level",
				l["msg"], l[TraceIDKey], l[SpanIDKey], sc.TraceID(), sc.SpanID())
		}
	}
	if g, _ := lines[1]["req"].(map[string]any); g["path"] != "/x" {
		t.Errorf("group attrs lost: %v", lines[1])
	}
	if g, _ := lines[2]["g"].(map[string]any); lines[2]["a"] != 1.0 || g["b"] != 2.0 {
		t.Errorf("attrs around group lost: %v", lines[2])
	}
	if _, ok := lines[3][TraceIDKey]; ok {
		t.Errorf("record outside a span has a trace id: %v", lines[3])
	}
	if _, ok := lines[3][SpanIDKey]; ok {
		t.Errorf("record outside a span has a span id: %v", lines[3])
	}
	if got := len(rec.Ended()); got != 1 {
		t.Fatalf("recorded %d spans", got)
	}
}
