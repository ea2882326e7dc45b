package gateway

import (
	"context"
	"log/slog"
	"time"

	"github.com/go-kit/kit/endpoint"
	"github.com/prometheus/client_golang/prometheus"

	"streamspace.dev/libs/apperr"
)

// Logging returns endpoint middleware that logs each admin call's outcome and duration:
// coded errors at debug (they are the caller's business), internal ones at error.
// Requests are not logged: assignment specs may carry secrets.
func Logging(logger *slog.Logger) func(name string, e endpoint.Endpoint) endpoint.Endpoint {
	return func(name string, next endpoint.Endpoint) endpoint.Endpoint {
		return func(ctx context.Context, req any) (resp any, err error) {
			defer func(start time.Time) {
				level := slog.LevelDebug
				if err != nil && apperr.CodeOf(err) == apperr.Internal {
					level = slog.LevelError
				}
				logger.Log(ctx, level, "agent-gateway call", "endpoint", name, "code", apperr.CodeOf(err),
					"duration", time.Since(start), "err", err)
			}(time.Now())
			return next(ctx, req)
		}
	}
}

// Metrics returns endpoint middleware that times calls by endpoint and error code (empty
// for success), registered on reg (shared when several modules use one registry).
func Metrics(reg prometheus.Registerer) func(name string, e endpoint.Endpoint) endpoint.Endpoint {
	duration := reuse(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "streamspace", Subsystem: "agent_gateway", Name: "call_duration_seconds",
		Help:    "Duration of agent-gateway admin calls, by endpoint and error code.",
		Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"endpoint", "code"}))
	return func(name string, next endpoint.Endpoint) endpoint.Endpoint {
		return func(ctx context.Context, req any) (any, error) {
			start := time.Now()
			resp, err := next(ctx, req)
			duration.WithLabelValues(name, string(apperr.CodeOf(err))).Observe(time.Since(start).Seconds())
			return resp, err
		}
	}
}
