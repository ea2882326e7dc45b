package telemetry

import (
	"context"
	"fmt"
	"os"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// Config names the running service in every span's resource.
type Config struct {
	// Service is the service.name resource attribute, e.g. "sessions".
	// OTEL_SERVICE_NAME, when set, overrides it, as the OpenTelemetry spec requires.
	Service string
	// Version is the service.version resource attribute, e.g. a release tag.
	Version string
}

// The standard OpenTelemetry variables Setup reads itself; the exporters read the rest
// (headers, timeouts, TLS) on their own.
const (
	envEndpoint       = "OTEL_EXPORTER_OTLP_ENDPOINT"
	envTracesEndpoint = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	envProtocol       = "OTEL_EXPORTER_OTLP_PROTOCOL"
	envTracesProtocol = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
)

// Setup installs a global SDK TracerProvider for cfg's service and the W3C TraceContext
// and Baggage propagator.
//
// Spans are exported over OTLP only when OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set. OTEL_EXPORTER_OTLP_PROTOCOL (or its
// _TRACES_ variant) "grpc" selects gRPC; "http/protobuf" or unset selects HTTP. Without an
// endpoint the provider still samples and hands out valid span contexts, so trace ids
// appear in logs, but nothing leaves the process. Sampling follows OTEL_TRACES_SAMPLER
// (default: parent-based, always on).
//
// The returned shutdown flushes pending spans and stops the provider; call it last, after
// the servers have drained, so the spans of the final requests are not lost.
func Setup(ctx context.Context, cfg Config) (shutdown func(context.Context) error, err error) {
	res, err := resource.New(ctx,
		resource.WithSchemaURL(semconv.SchemaURL),
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithAttributes(semconv.ServiceName(cfg.Service), semconv.ServiceVersion(cfg.Version)),
		// Last, so that operators can override the code's names from the environment.
		resource.WithFromEnv(),
	)
	// resource.New reports partial detection failures (e.g. an unreadable host name) but
	// still returns a usable resource; only a nil resource is fatal.
	if err != nil && res == nil {
		return nil, fmt.Errorf("telemetry: building resource: %w", err)
	}

	opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	exp, err := newExporter(ctx)
	if err != nil {
		return nil, err
	}
	if exp != nil {
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	tp := sdktrace.NewTracerProvider(opts...)

	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(
		propagation.TraceContext{}, propagation.Baggage{}))
	return tp.Shutdown, nil
}

// newExporter returns nil, nil when no OTLP endpoint is configured.
func newExporter(ctx context.Context) (sdktrace.SpanExporter, error) {
	if os.Getenv(envEndpoint) == "" && os.Getenv(envTracesEndpoint) == "" {
		return nil, nil
	}
	protocol := os.Getenv(envTracesProtocol)
	if protocol == "" {
		protocol = os.Getenv(envProtocol)
	}
	var (
		exp sdktrace.SpanExporter
		err error
	)
	switch strings.TrimSpace(protocol) {
	case "grpc":
		// The gRPC client connects lazily, so a collector that is down at start-up does
		// not stop the service from starting.
		exp, err = otlptracegrpc.New(ctx)
	case "", "http/protobuf":
		exp, err = otlptracehttp.New(ctx)
	default:
		return nil, fmt.Errorf("telemetry: %s=%q: want grpc or http/protobuf", envProtocol, protocol)
	}
	if err != nil {
		return nil, fmt.Errorf("telemetry: creating OTLP %s exporter: %w", protocolName(protocol), err)
	}
	return exp, nil
}

func protocolName(p string) string {
	if p == "" {
		return "http/protobuf"
	}
	return p
}
