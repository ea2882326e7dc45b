package catalog

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"streamspace.dev/libs/apperr"
)

// Middleware decorates a Service.
type Middleware func(Service) Service

// Instrumenting counts and times every Service call by method, scope and error code, so a
// dashboard shows the catalog's latency apart from the HTTP layer's.
func Instrumenting(reg prometheus.Registerer) Middleware {
	hist := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "catalog_service_duration_seconds",
		Help:    "Duration of catalog service calls by method, scope and outcome code.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	}, []string{"method", "scope", "code"})
	reg.MustRegister(hist)
	return func(next Service) Service { return &instrumenting{next: next, hist: hist} }
}

type instrumenting struct {
	next Service
	hist *prometheus.HistogramVec
}

func (m *instrumenting) observe(method string, scope Scope, start time.Time, err error) {
	code := string(apperr.CodeOf(err))
	if code == "" {
		code = "ok"
	}
	m.hist.WithLabelValues(method, string(scope), code).Observe(time.Since(start).Seconds())
}

func (m *instrumenting) List(ctx context.Context, scope Scope, q Query) (p Page, err error) {
	defer func(start time.Time) { m.observe("list", scope, start, err) }(time.Now())
	return m.next.List(ctx, scope, q)
}

func (m *instrumenting) Get(ctx context.Context, scope Scope, name TemplateName) (t Template, err error) {
	defer func(start time.Time) { m.observe("get", scope, start, err) }(time.Now())
	return m.next.Get(ctx, scope, name)
}

func (m *instrumenting) Create(ctx context.Context, scope Scope, nt NewTemplate) (t Template, err error) {
	defer func(start time.Time) { m.observe("create", scope, start, err) }(time.Now())
	return m.next.Create(ctx, scope, nt)
}

func (m *instrumenting) Update(ctx context.Context, scope Scope, name TemplateName, u Update) (t Template, err error) {
	defer func(start time.Time) { m.observe("update", scope, start, err) }(time.Now())
	return m.next.Update(ctx, scope, name, u)
}

func (m *instrumenting) SetEnabled(ctx context.Context, scope Scope, name TemplateName, enabled bool, pre Precondition) (t Template, err error) {
	defer func(start time.Time) { m.observe("set_enabled", scope, start, err) }(time.Now())
	return m.next.SetEnabled(ctx, scope, name, enabled, pre)
}

func (m *instrumenting) Delete(ctx context.Context, scope Scope, name TemplateName, pre Precondition) (err error) {
	defer func(start time.Time) { m.observe("delete", scope, start, err) }(time.Now())
	return m.next.Delete(ctx, scope, name, pre)
}

func (m *instrumenting) Import(ctx context.Context, scope Scope, yaml []byte) (r ImportReport, err error) {
	defer func(start time.Time) { m.observe("import", scope, start, err) }(time.Now())
	return m.next.Import(ctx, scope, yaml)
}

// Logging logs every change to a catalog (the reads are counted by Instrumenting, and
// logging each would drown the changes). Internal errors are logged by the transport.
func Logging(logger *slog.Logger) Middleware {
	return func(next Service) Service { return &logging{Service: next, logger: logger} }
}

type logging struct {
	Service
	logger *slog.Logger
}

func (m *logging) log(ctx context.Context, action string, scope Scope, name TemplateName, err error, args ...any) {
	level := slog.LevelInfo
	if err != nil {
		level = slog.LevelDebug
	}
	m.logger.Log(ctx, level, "catalog "+action, append([]any{"scope", scope, "template", name, "code", apperr.CodeOf(err)}, args...)...)
}

func (m *logging) Create(ctx context.Context, scope Scope, nt NewTemplate) (Template, error) {
	t, err := m.Service.Create(ctx, scope, nt)
	m.log(ctx, "create", scope, nt.Name, err, "version", t.Version)
	return t, err
}

func (m *logging) Update(ctx context.Context, scope Scope, name TemplateName, u Update) (Template, error) {
	t, err := m.Service.Update(ctx, scope, name, u)
	m.log(ctx, "update", scope, name, err, "version", t.Version)
	return t, err
}

func (m *logging) SetEnabled(ctx context.Context, scope Scope, name TemplateName, enabled bool, pre Precondition) (Template, error) {
	t, err := m.Service.SetEnabled(ctx, scope, name, enabled, pre)
	m.log(ctx, "set enabled", scope, name, err, "enabled", enabled, "version", t.Version)
	return t, err
}

func (m *logging) Delete(ctx context.Context, scope Scope, name TemplateName, pre Precondition) error {
	err := m.Service.Delete(ctx, scope, name, pre)
	m.log(ctx, "delete", scope, name, err)
	return err
}

func (m *logging) Import(ctx context.Context, scope Scope, yaml []byte) (ImportReport, error) {
	r, err := m.Service.Import(ctx, scope, yaml)
	m.log(ctx, "import", scope, "", err, "created", r.Created, "updated", r.Updated, "unchanged", r.Unchanged, "rejected", r.Rejected)
	return r, err
}
