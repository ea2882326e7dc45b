package telemetry

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// These tests change process-wide state (environment, global provider), so they do not
// run in parallel. The other tests in this package never read the globals.

func TestSetupWithoutEndpointMakesValidSpans(t *testing.T) {
	t.Setenv(envEndpoint, "")
	t.Setenv(envTracesEndpoint, "")
	shutdown, err := Setup(context.Background(), Config{Service: "test", Version: "v0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = shutdown(context.Background()) })

	_, span := otel.Tracer("test").Start(context.Background(), "op")
	defer span.End()
	if !span.SpanContext().IsValid() || !span.SpanContext().IsSampled() {
		t.Fatalf("span context %v is not valid and sampled", span.SpanContext())
	}

	// The propagator carries the trace over HTTP headers.
	h := http.Header{}
	otel.GetTextMapPropagator().Inject(trace.ContextWithSpan(context.Background(), span),
		propagation.HeaderCarrier(h))
	if !strings.Contains(h.Get("traceparent"), span.SpanContext().TraceID().String()) {
		t.Fatalf("traceparent %q", h.Get("traceparent"))
	}
}

func TestSetupExportsOverOTLPHTTP(t *testing.T) {
	var exports atomic.Int32
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/v1/traces" && r.Method == http.MethodPost {
			exports.Add(1)
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.WriteHeader(http.StatusOK)
	}))
	defer collector.Close()
	t.Setenv(envEndpoint, collector.URL)
	t.Setenv(envTracesEndpoint, "")
	t.Setenv(envProtocol, "http/protobuf")
	t.Setenv(envTracesProtocol, "")

	shutdown, err := Setup(context.Background(), Config{Service: "test", Version: "v0"})
	if err != nil {
		t.Fatal(err)
	}
	_, span := otel.Tracer("test").Start(context.Background(), "exported")
	span.End()
	// Shutdown flushes the batcher, so the export has happened when it returns.
	if err := shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if exports.Load() == 0 {
		t.Fatal("no OTLP export reached the collector")
	}
}

func TestSetupSelectsGRPCAndRejectsUnknownProtocol(t *testing.T) {
	t.Setenv(envEndpoint, "")
	t.Setenv(envTracesEndpoint, "http://127.0.0.1:1")
	t.Setenv(envProtocol, "")

	t.Setenv(envTracesProtocol, "grpc")
	shutdown, err := Setup(context.Background(), Config{Service: "test"})
	if err != nil {
		t.Fatalf("grpc: %v", err)
	}
	// Nothing was exported, so shutting down must not wait on the unreachable collector.
	if err := shutdown(context.Background()); err != nil {
		t.Fatalf("grpc shutdown: %v", err)
	}

	t.Setenv(envTracesProtocol, "carrier-pigeon")
	if _, err := Setup(context.Background(), Config{Service: "test"}); err == nil {
		t.Fatal("unknown protocol accepted")
	}
}
