package telemetry

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
)

// NewRegistry returns a Prometheus registry holding the Go runtime and process
// collectors. Each binary makes one and passes it to every Middleware it mounts.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// MetricsHandler serves reg in the Prometheus exposition format, for /metrics.
func MetricsHandler(reg prometheus.Gatherer) http.Handler {
	// ContinueOnError: one broken collector must not hide every other metric.
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// UnmatchedRoute is the route label of requests that matched no ServeMux pattern (404s
// and requests to a handler that is not a mux), so scanners cannot mint label values.
const UnmatchedRoute = "unmatched"

// httpMetrics are shared by every Middleware on one registry.
type httpMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// Middleware instruments an HTTP handler, normally a *http.ServeMux, for service:
//
//   - an OpenTelemetry server span (otelhttp), named after the matched route pattern
//     (r.Pattern, e.g. "GET /v1/sessions/{id}") and joined to the caller's trace through
//     the global propagator;
//   - http_server_requests_total{service,method,route,code};
//   - http_server_request_duration_seconds{service,method,route}.
//
// The route label is the ServeMux pattern, never the raw path, so label cardinality stays
// bounded; methods outside the standard set are counted as "OTHER". Wrap the mux itself
// (or handlers registered on it): the pattern is read after the mux has routed.
//
// Middleware may be called many times with the same registry (the all-in-one binary mounts
// several services on one); later calls reuse the collectors registered by the first. It
// panics if reg holds incompatible collectors under these names, like MustRegister.
// opts are passed to otelhttp, e.g. otelhttp.WithTracerProvider in tests.
func Middleware(reg prometheus.Registerer, service string, opts ...otelhttp.Option) func(http.Handler) http.Handler {
	m := registerHTTPMetrics(reg)
	otelOpts := append([]otelhttp.Option{otelhttp.WithSpanNameFormatter(spanName)}, opts...)
	traced := otelhttp.NewMiddleware(service, otelOpts...)
	return func(next http.Handler) http.Handler {
		return traced(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			sw := &statusWriter{ResponseWriter: w}
			next.ServeHTTP(sw, r)
			// ServeMux sets r.Pattern on this very request while routing, so it is known
			// only now.
			route := r.Pattern
			if route == "" {
				route = UnmatchedRoute
			}
			method := methodLabel(r.Method)
			m.requests.WithLabelValues(service, method, route, strconv.Itoa(sw.code())).Inc()
			m.duration.WithLabelValues(service, method, route).Observe(time.Since(start).Seconds())
		}))
	}
}

func registerHTTPMetrics(reg prometheus.Registerer) httpMetrics {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "http_server_requests_total",
		Help: "HTTP requests served, by service, method, route pattern and status code.",
	}, []string{"service", "method", "route", "code"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "http_server_request_duration_seconds",
		Help:    "Time to serve HTTP requests, by service, method and route pattern.",
		Buckets: prometheus.DefBuckets,
	}, []string{"service", "method", "route"})
	return httpMetrics{
		requests: registerOrReuse(reg, requests),
		duration: registerOrReuse(reg, duration),
	}
}

// registerOrReuse registers c, or returns the equal collector already registered.
func registerOrReuse[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	err := reg.Register(c)
	if err == nil {
		return c
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing
		}
	}
	panic(fmt.Sprintf("telemetry: registering HTTP metrics: %v", err))
}

// spanName names server spans "METHOD pattern". It runs once before routing (no pattern
// yet: the method alone, as the semantic conventions advise) and once after.
func spanName(_ string, r *http.Request) string {
	method := methodLabel(r.Method)
	switch {
	case r.Pattern == "":
		return method
	case r.Pattern[0] == '/':
		return method + " " + r.Pattern
	default: // the pattern already starts with its method, e.g. "GET /x"
		return r.Pattern
	}
}

func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace:
		return m
	}
	return "OTHER"
}

// statusWriter records the status code. It exposes the wrapped writer through Unwrap, so
// http.ResponseController (deadlines, flush, hijack) keeps working, and implements Flusher
// and Hijacker directly for code that still type-asserts.
type statusWriter struct {
	http.ResponseWriter
	status   int
	hijacked bool
}

func (w *statusWriter) WriteHeader(code int) {
	// 1xx responses are interim; the final status comes later.
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil {
		w.hijacked = true
	}
	return c, rw, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) code() int {
	switch {
	case w.status != 0:
		return w.status
	case w.hijacked: // a protocol upgrade such as a WebSocket
		return http.StatusSwitchingProtocols
	default: // the handler wrote nothing; net/http sends 200
		return http.StatusOK
	}
}
