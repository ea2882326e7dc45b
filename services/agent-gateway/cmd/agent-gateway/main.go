// Command agent-gateway runs StreamSpace's agent-gateway service on its own: the agents'
// QUIC tunnels and HTTPS enrollment on --agent-listen, the admin API on --listen. See
// --help for its settings.
package main

import (
	"errors"
	"flag"

	"streamspace.dev/libs/server"
	gateway "streamspace.dev/services/agent-gateway"
	"streamspace.dev/services/agent-gateway/postgres"
)

func main() {
	var cfg gateway.Config
	server.MainFlags(gateway.Name, func(fs *flag.FlagSet) { cfg.Register(fs, true) }, func(d server.Deps) ([]server.Module, error) {
		cfg = cfg.WithDefaults()
		if cfg.IdentityURL == "" {
			return nil, errors.New("--identity-url (or STREAMSPACE_IDENTITY_URL) is required")
		}
		if cfg.SessionsURL == "" {
			return nil, errors.New("--sessions-url (or STREAMSPACE_SESSIONS_URL) is required")
		}
		store := postgres.New(d.DB, postgres.Thresholds{DegradedAfter: cfg.DegradedAfter, OfflineAfter: cfg.OfflineAfter})
		m, err := gateway.New(d, cfg, store, gateway.NewHTTPEnroller(cfg.IdentityURL, nil),
			gateway.NewHTTPSessions(cfg.SessionsURL, nil))
		if err != nil {
			return nil, err
		}
		return []server.Module{m}, nil
	})
}
