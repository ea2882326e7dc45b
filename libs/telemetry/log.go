package telemetry

import (
	"context"
	"io"
	"log/slog"

	"go.opentelemetry.io/otel/trace"
)

// Log attribute keys for trace correlation. They match what most log backends look for
// when linking a line to its trace.
const (
	TraceIDKey = "trace_id"
	SpanIDKey  = "span_id"
)

// NewLogger returns a JSON logger writing to w at level and up, whose records carry
// trace_id and span_id when logged with a context holding a valid span (use the
// ...Context methods, e.g. logger.InfoContext(ctx, ...)).
func NewLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(NewTraceHandler(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})))
}

// TraceHandler is a slog.Handler that adds trace_id and span_id to every record whose
// context carries a valid span, then passes the record to the handler it wraps.
//
// The ids always sit at the top level of the record, even under WithGroup, so queries
// for trace_id work on every line.
type TraceHandler struct {
	// base is the wrapped handler before any WithGroup; next is base with every
	// WithAttrs/WithGroup applied. While no group is open they are the same handler
	// plus attrs, and the ids can simply be added to the record.
	base slog.Handler
	next slog.Handler
	// ops replays WithAttrs/WithGroup calls onto base after the ids, needed only once a
	// group is open (otherwise the ids would be nested inside the group).
	ops     []func(slog.Handler) slog.Handler
	grouped bool
}

// NewTraceHandler wraps h.
func NewTraceHandler(h slog.Handler) *TraceHandler {
	return &TraceHandler{base: h, next: h}
}

// Enabled implements slog.Handler.
func (h *TraceHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.next.Enabled(ctx, level)
}

// Handle implements slog.Handler.
func (h *TraceHandler) Handle(ctx context.Context, r slog.Record) error {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return h.next.Handle(ctx, r)
	}
	ids := []slog.Attr{
		slog.String(TraceIDKey, sc.TraceID().String()),
		slog.String(SpanIDKey, sc.SpanID().String()),
	}
	if !h.grouped {
		r = r.Clone() // the caller may reuse r; AddAttrs must not leak into it
		r.AddAttrs(ids...)
		return h.next.Handle(ctx, r)
	}
	// Rare path: rebuild the chain with the ids attached before the first group.
	next := h.base.WithAttrs(ids)
	for _, op := range h.ops {
		next = op(next)
	}
	return next.Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h *TraceHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	return h.with(func(n slog.Handler) slog.Handler { return n.WithAttrs(attrs) }, false)
}

// WithGroup implements slog.Handler.
func (h *TraceHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return h.with(func(n slog.Handler) slog.Handler { return n.WithGroup(name) }, true)
}

func (h *TraceHandler) with(op func(slog.Handler) slog.Handler, group bool) *TraceHandler {
	ops := make([]func(slog.Handler) slog.Handler, len(h.ops), len(h.ops)+1)
	copy(ops, h.ops)
	return &TraceHandler{
		base:    h.base,
		next:    op(h.next),
		ops:     append(ops, op),
		grouped: h.grouped || group,
	}
}
