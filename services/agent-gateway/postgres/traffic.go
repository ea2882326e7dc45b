package postgres

import (
	"context"

	"github.com/jackc/pgx/v5"

	gateway "streamspace.dev/services/agent-gateway"
)

// RecordTraffic implements gateway.Store: one upsert for the whole batch, adding the
// bytes and stamping last_traffic_at with the statement's time.
func (s *Store) RecordTraffic(ctx context.Context, ts []gateway.Traffic) error {
	if len(ts) == 0 {
		return nil
	}
	ids := make([]string, len(ts))
	in := make([]int64, len(ts))
	out := make([]int64, len(ts))
	for i, t := range ts {
		ids[i], in[i], out[i] = string(t.SessionID), t.In, t.Out
	}
	return s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO session_traffic (session_id, last_traffic_at, bytes_in, bytes_out)
			SELECT id, now(), i, o FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u (id, i, o)
			ON CONFLICT (session_id) DO UPDATE SET last_traffic_at = EXCLUDED.last_traffic_at,
				bytes_in = session_traffic.bytes_in + EXCLUDED.bytes_in,
				bytes_out = session_traffic.bytes_out + EXCLUDED.bytes_out`, ids, in, out)
		return err
	})
}
