package telemetry

import (
	"github.com/exaring/otelpgx"
	"github.com/jackc/pgx/v5"
)

// PgxTracer returns an OpenTelemetry tracer for pgx; set it as ConnConfig.Tracer (for a
// pool: pgxpool.Config.ConnConfig.Tracer). The returned value also implements pgx's batch,
// copy-from, prepare and connect tracers, which pgx finds by type assertion.
//
// otelpgx records a span only under an existing parent span in the query's context: SQL
// run inside an HTTP request wrapped by Middleware is traced, while a bare
// context.Background() query (start-up, background jobs) is not, unless the caller starts
// a span first. It uses the global TracerProvider, so call Setup before serving.
func PgxTracer() pgx.QueryTracer {
	return otelpgx.NewTracer()
}
