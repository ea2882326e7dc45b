// Command sessions runs StreamSpace's sessions service on its own. See --help for its settings.
package main

import (
	"flag"

	"streamspace.dev/libs/server"
	"streamspace.dev/services/sessions"
	"streamspace.dev/services/sessions/module"
)

func main() {
	var cfg module.Config
	server.MainFlags(sessions.Name, func(fs *flag.FlagSet) { cfg.Register(fs) }, func(d server.Deps) ([]server.Module, error) {
		m, err := module.New(d, cfg)
		if err != nil {
			return nil, err
		}
		return []server.Module{m}, nil
	})
}
