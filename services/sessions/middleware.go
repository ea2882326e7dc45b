package sessions

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"streamspace.dev/libs/apperr"
)

// Middleware decorates a Service.
type Middleware func(Service) Service

// Instrumenting times every Service call by method and error code, so a dashboard shows
// the service's latency apart from the HTTP layer's.
func Instrumenting(reg prometheus.Registerer) Middleware {
	hist := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sessions_service_duration_seconds",
		Help:    "Duration of sessions service calls by method and outcome code.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	}, []string{"method", "code"})
	reg.MustRegister(hist)
	return func(next Service) Service { return &instrumenting{next: next, hist: hist} }
}

type instrumenting struct {
	next Service
	hist *prometheus.HistogramVec
}

func (m *instrumenting) observe(method string, start time.Time, err error) {
	code := string(apperr.CodeOf(err))
	if code == "" {
		code = "ok"
	}
	m.hist.WithLabelValues(method, code).Observe(time.Since(start).Seconds())
}

func (m *instrumenting) Create(ctx context.Context, in NewSession, key string) (s Session, replayed bool, err error) {
	defer func(t time.Time) { m.observe("create", t, err) }(time.Now())
	return m.next.Create(ctx, in, key)
}

func (m *instrumenting) List(ctx context.Context, q Query) (p Page, err error) {
	defer func(t time.Time) { m.observe("list", t, err) }(time.Now())
	return m.next.List(ctx, q)
}

func (m *instrumenting) Get(ctx context.Context, id ID) (s Session, err error) {
	defer func(t time.Time) { m.observe("get", t, err) }(time.Now())
	return m.next.Get(ctx, id)
}

func (m *instrumenting) Hibernate(ctx context.Context, id ID) (s Session, err error) {
	defer func(t time.Time) { m.observe("hibernate", t, err) }(time.Now())
	return m.next.Hibernate(ctx, id)
}

func (m *instrumenting) Wake(ctx context.Context, id ID) (s Session, err error) {
	defer func(t time.Time) { m.observe("wake", t, err) }(time.Now())
	return m.next.Wake(ctx, id)
}

func (m *instrumenting) Stop(ctx context.Context, id ID) (s Session, err error) {
	defer func(t time.Time) { m.observe("stop", t, err) }(time.Now())
	return m.next.Stop(ctx, id)
}

func (m *instrumenting) Delete(ctx context.Context, id ID) (err error) {
	defer func(t time.Time) { m.observe("delete", t, err) }(time.Now())
	return m.next.Delete(ctx, id)
}

func (m *instrumenting) SetTags(ctx context.Context, id ID, tags []string) (s Session, err error) {
	defer func(t time.Time) { m.observe("set_tags", t, err) }(time.Now())
	return m.next.SetTags(ctx, id, tags)
}

func (m *instrumenting) Events(ctx context.Context, id ID) (e []Event, err error) {
	defer func(t time.Time) { m.observe("events", t, err) }(time.Now())
	return m.next.Events(ctx, id)
}

func (m *instrumenting) Heartbeat(ctx context.Context, id ID) (err error) {
	defer func(t time.Time) { m.observe("heartbeat", t, err) }(time.Now())
	return m.next.Heartbeat(ctx, id)
}

func (m *instrumenting) Settings(ctx context.Context) (s Settings, err error) {
	defer func(t time.Time) { m.observe("settings", t, err) }(time.Now())
	return m.next.Settings(ctx)
}

func (m *instrumenting) SetSettings(ctx context.Context, st Settings) (s Settings, err error) {
	defer func(t time.Time) { m.observe("set_settings", t, err) }(time.Now())
	return m.next.SetSettings(ctx, st)
}

func (m *instrumenting) SetUserQuota(ctx context.Context, user string, q Quota) (err error) {
	defer func(t time.Time) { m.observe("set_user_quota", t, err) }(time.Now())
	return m.next.SetUserQuota(ctx, user, q)
}

// Logging logs every lifecycle change (reads are counted by Instrumenting; logging each
// would drown the changes). Internal errors are logged by the transport.
func Logging(logger *slog.Logger) Middleware {
	return func(next Service) Service { return &logging{Service: next, logger: logger} }
}

type logging struct {
	Service
	logger *slog.Logger
}

func (m *logging) log(ctx context.Context, action string, id ID, err error, args ...any) {
	level := slog.LevelInfo
	if err != nil {
		level = slog.LevelDebug
	}
	m.logger.Log(ctx, level, "session "+action, append([]any{"session", id, "code", apperr.CodeOf(err)}, args...)...)
}

func (m *logging) Create(ctx context.Context, in NewSession, key string) (Session, bool, error) {
	s, replayed, err := m.Service.Create(ctx, in, key)
	m.log(ctx, "create", s.ID, err, "template", in.Template, "replayed", replayed)
	return s, replayed, err
}

func (m *logging) Hibernate(ctx context.Context, id ID) (Session, error) {
	s, err := m.Service.Hibernate(ctx, id)
	m.log(ctx, "hibernate", id, err)
	return s, err
}

func (m *logging) Wake(ctx context.Context, id ID) (Session, error) {
	s, err := m.Service.Wake(ctx, id)
	m.log(ctx, "wake", id, err)
	return s, err
}

func (m *logging) Stop(ctx context.Context, id ID) (Session, error) {
	s, err := m.Service.Stop(ctx, id)
	m.log(ctx, "stop", id, err)
	return s, err
}

func (m *logging) Delete(ctx context.Context, id ID) error {
	err := m.Service.Delete(ctx, id)
	m.log(ctx, "delete", id, err)
	return err
}
