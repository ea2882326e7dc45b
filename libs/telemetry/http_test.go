package telemetry

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// newTestTracing returns a recorder and the otelhttp options that route spans to it
// without touching the global provider, so tests can run in parallel.
func newTestTracing(t *testing.T) (*tracetest.SpanRecorder, *sdktrace.TracerProvider, []otelhttp.Option) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return rec, tp, []otelhttp.Option{
		otelhttp.WithTracerProvider(tp),
		otelhttp.WithPropagators(propagation.TraceContext{}),
	}
}

func get(t *testing.T, url string, hdr http.Header) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp
}

func TestMiddlewareSpansAndMetricsUseRoutePattern(t *testing.T) {
	t.Parallel()
	rec, tp, opts := newTestTracing(t)
	reg := prometheus.NewRegistry()

	// The handler runs on the server's goroutine; the channel orders its write before
	// the test's read.
	handlerSpans := make(chan trace.SpanContext, 3)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/sessions/{id}", func(w http.ResponseWriter, r *http.Request) {
		handlerSpans <- trace.SpanContextFromContext(r.Context())
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("/boom", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusTeapot)
	})
	srv := httptest.NewServer(Middleware(reg, "sessions", opts...)(mux))
	defer srv.Close()

	// A caller's trace continues through the server span.
	_, parent := tp.Tracer("client").Start(context.Background(), "client")
	hdr := http.Header{}
	propagation.TraceContext{}.Inject(trace.ContextWithSpan(context.Background(), parent), propagation.HeaderCarrier(hdr))
	parent.End()

	for _, id := range []string{"a", "b", "c"} {
		if resp := get(t, srv.URL+"/v1/sessions/"+id, hdr); resp.StatusCode != http.StatusNoContent {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	get(t, srv.URL+"/boom", nil)
	get(t, srv.URL+"/no/such/path/"+strings.Repeat("x", 10), nil)

	handlerSpan := <-handlerSpans
	if !handlerSpan.IsValid() || handlerSpan.TraceID() != parent.SpanContext().TraceID() {
		t.Fatalf("handler span %v does not continue trace %v", handlerSpan, parent.SpanContext().TraceID())
	}
	names := map[string]int{}
	for _, s := range rec.Ended() {
		if s.SpanKind() == trace.SpanKindServer {
			names[s.Name()]++
		}
	}
	if names["GET /v1/sessions/{id}"] != 3 || names["GET /boom"] != 1 || names["GET"] != 1 {
		t.Fatalf("server span names %v", names)
	}

	for _, c := range []struct {
		labels []string
		want   float64
	}{
		{[]string{"sessions", "GET", "GET /v1/sessions/{id}", "204"}, 3},
		{[]string{"sessions", "GET", "/boom", "418"}, 1},
		{[]string{"sessions", "GET", UnmatchedRoute, "404"}, 1},
	} {
		got := testutil.ToFloat64(requestsCounter(t, reg).WithLabelValues(c.labels...))
		if got != c.want {
			t.Errorf("requests%v = %v, want %v", c.labels, got, c.want)
		}
	}
	// Raw paths never become label values.
	if n := testutil.CollectAndCount(requestsCounter(t, reg)); n != 3 {
		t.Errorf("%d request series, want 3", n)
	}
	if n, err := testutil.GatherAndCount(reg, "http_server_request_duration_seconds"); err != nil || n != 3 {
		t.Errorf("%d duration series (%v), want 3", n, err)
	}
}

// requestsCounter finds the registered counter through the same reuse path as Middleware.
func requestsCounter(t *testing.T, reg prometheus.Registerer) *prometheus.CounterVec {
	t.Helper()
	return registerHTTPMetrics(reg).requests
}

func TestMiddlewareTwiceOnOneRegistry(t *testing.T) {
	t.Parallel()
	_, _, opts := newTestTracing(t)
	reg := NewRegistry()
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})
	a := httptest.NewServer(Middleware(reg, "catalog", opts...)(ok))
	defer a.Close()
	b := httptest.NewServer(Middleware(reg, "identity", opts...)(ok))
	defer b.Close()
	get(t, a.URL, nil)
	get(t, b.URL, nil)
	get(t, b.URL, nil)

	c := requestsCounter(t, reg)
	if got := testutil.ToFloat64(c.WithLabelValues("catalog", "GET", UnmatchedRoute, "200")); got != 1 {
		t.Errorf("catalog count %v", got)
	}
	if got := testutil.ToFloat64(c.WithLabelValues("identity", "GET", UnmatchedRoute, "200")); got != 2 {
		t.Errorf("identity count %v", got)
	}

	// The shared registry serves both services and the runtime collectors.
	m := httptest.NewServer(MetricsHandler(reg))
	defer m.Close()
	resp, err := http.Get(m.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	for _, want := range []string{
		`http_server_requests_total{code="200",method="GET",route="unmatched",service="catalog"} 1`,
		`http_server_requests_total{code="200",method="GET",route="unmatched",service="identity"} 2`,
		"go_goroutines", "process_cpu_seconds_total",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestMiddlewarePanicsOnConflictingCollector(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "http_server_requests_total", Help: "someone else's",
	}, []string{"other"}))
	defer func() {
		if recover() == nil {
			t.Fatal("no panic on an incompatible collector")
		}
	}()
	Middleware(reg, "x")
}

func TestMethodLabelBoundsCardinality(t *testing.T) {
	t.Parallel()
	if got := methodLabel("BREW"); got != "OTHER" {
		t.Fatalf("methodLabel(BREW) = %q", got)
	}
	if got := methodLabel(http.MethodPatch); got != http.MethodPatch {
		t.Fatalf("methodLabel(PATCH) = %q", got)
	}
}

func TestPgxTracerImplementsTheOptionalTracers(t *testing.T) {
	t.Parallel()
	// pgx discovers these by type assertion on ConnConfig.Tracer.
	tr := PgxTracer()
	if _, ok := tr.(pgx.BatchTracer); !ok {
		t.Error("not a BatchTracer")
	}
	if _, ok := tr.(pgx.CopyFromTracer); !ok {
		t.Error("not a CopyFromTracer")
	}
	if _, ok := tr.(pgx.PrepareTracer); !ok {
		t.Error("not a PrepareTracer")
	}
	if _, ok := tr.(pgx.ConnectTracer); !ok {
		t.Error("not a ConnectTracer")
	}
}
