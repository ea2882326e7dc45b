// Command identity runs StreamSpace's identity service on its own. See --help for its
// settings; STREAMSPACE_KEK is required.
package main

import (
	"flag"

	"streamspace.dev/libs/server"
	"streamspace.dev/services/identity"
	"streamspace.dev/services/identity/postgres"
)

func main() {
	var cfg identity.Config
	server.MainFlags(identity.Name, func(fs *flag.FlagSet) { cfg.Register(fs) }, func(d server.Deps) ([]server.Module, error) {
		m, err := identity.New(d, cfg, postgres.New(d.DB))
		if err != nil {
			return nil, err
		}
		return []server.Module{m}, nil
	})
}
