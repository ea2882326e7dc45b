// Command scheduler runs StreamSpace's scheduler service on its own. See --help for its settings.
package main

import (
	"flag"

	"streamspace.dev/libs/server"
	"streamspace.dev/services/scheduler"
	"streamspace.dev/services/scheduler/module"
)

func main() {
	var cfg module.Config
	server.MainFlags(scheduler.Name, func(fs *flag.FlagSet) { cfg.Register(fs) }, func(d server.Deps) ([]server.Module, error) {
		m, err := module.New(d, cfg)
		if err != nil {
			return nil, err
		}
		return []server.Module{m}, nil
	})
}
