package telemetry

import (
	"context"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
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

	// Raw paths never become label values: exactly these series exist.
	wantRequests := map[string]float64{
		"sessions GET GET /v1/sessions/{id} 204":  3,
		"sessions GET /boom 418":                  1,
		"sessions GET " + UnmatchedRoute + " 404": 1,
	}
	if got := gather(t, reg, "http_server_requests_total"); !maps.Equal(got, wantRequests) {
		t.Errorf("requests %v, want %v", got, wantRequests)
	}
	wantDurations := map[string]float64{ // sample counts
		"sessions GET GET /v1/sessions/{id}": 3,
		"sessions GET /boom":                 1,
		"sessions GET " + UnmatchedRoute:     1,
	}
	if got := gather(t, reg, "http_server_request_duration_seconds"); !maps.Equal(got, wantDurations) {
		t.Errorf("durations %v, want %v", got, wantDurations)
	}
}

// gather returns the series of one counter or histogram, keyed by their label values in
// label order (service, method, route[, code]), with the counter's value or the
// histogram's sample count.
func gather(t *testing.T, g prometheus.Gatherer, name string) map[string]float64 {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			byName := map[string]string{}
			for _, l := range m.GetLabel() {
				byName[l.GetName()] = l.GetValue()
			}
			key := byName["service"] + " " + byName["method"] + " " + byName["route"]
			if c, ok := byName["code"]; ok {
				key += " " + c
			}
			if h := m.GetHistogram(); h != nil {
				out[key] = float64(h.GetSampleCount())
			} else {
				out[key] = m.GetCounter().GetValue()
			}
		}
	}
	return out
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

	want := map[string]float64{
		"catalog GET " + UnmatchedRoute + " 200":  1,
		"identity GET " + UnmatchedRoute + " 200": 2,
	}
	if got := gather(t, reg, "http_server_requests_total"); !maps.Equal(got, want) {
		t.Errorf("requests %v, want %v", got, want)
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
