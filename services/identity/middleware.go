package identity

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/go-kit/kit/endpoint"
	"github.com/prometheus/client_golang/prometheus"

	"streamspace.dev/libs/apperr"
)

// Logging returns endpoint middleware that logs each call's outcome and duration. Coded
// errors are the caller's business and log at debug; internal ones at error. Requests and
// responses are never logged: they carry passwords and tokens.
func Logging(logger *slog.Logger) func(name string) endpoint.Middleware {
	return func(name string) endpoint.Middleware {
		return func(next endpoint.Endpoint) endpoint.Endpoint {
			return func(ctx context.Context, req any) (resp any, err error) {
				defer func(start time.Time) {
					level := slog.LevelDebug
					if err != nil && apperr.CodeOf(err) == apperr.Internal {
						level = slog.LevelError
					}
					logger.Log(ctx, level, "identity call", "endpoint", name, "code", apperr.CodeOf(err),
						"duration", time.Since(start), "err", err)
				}(time.Now())
				return next(ctx, req)
			}
		}
	}
}

// Metrics returns endpoint middleware that counts calls and times them by endpoint and
// error code (empty for success), registered on reg.
func Metrics(reg prometheus.Registerer) func(name string) endpoint.Middleware {
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "streamspace", Subsystem: "identity", Name: "call_duration_seconds",
		Help:    "Duration of identity service calls, by endpoint and error code.",
		Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"endpoint", "code"})
	if err := reg.Register(duration); err != nil {
		// A second identity module on one registry (tests) shares the first's collector.
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			panic(err)
		}
		duration = are.ExistingCollector.(*prometheus.HistogramVec)
	}
	return func(name string) endpoint.Middleware {
		return func(next endpoint.Endpoint) endpoint.Endpoint {
			return func(ctx context.Context, req any) (any, error) {
				start := time.Now()
				resp, err := next(ctx, req)
				duration.WithLabelValues(name, string(apperr.CodeOf(err))).Observe(time.Since(start).Seconds())
				return resp, err
			}
		}
	}
}
