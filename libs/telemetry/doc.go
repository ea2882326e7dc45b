// Package telemetry wires StreamSpace's logs, traces and metrics.
//
// A binary calls Setup once (global TracerProvider and propagator), builds its logger with
// NewLogger (JSON lines carrying trace_id and span_id), makes one Prometheus registry with
// NewRegistry, serves it with MetricsHandler, and wraps each HTTP mux in Middleware. SQL
// spans come from PgxTracer.
//
// Traces leave the process only when the standard OTEL_EXPORTER_OTLP_* variables ask for
// it; otherwise spans are still sampled and carry valid ids, so logs can be correlated
// even on a laptop without a collector.
package telemetry
