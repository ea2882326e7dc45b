// Command scheduler runs StreamSpace's scheduler service on its own. See --help for its settings.
package main

import (
	"streamspace.dev/libs/server"
	"streamspace.dev/services/scheduler"
)

func main() {
	server.Main(scheduler.Name, func(d server.Deps) ([]server.Module, error) {
		m, err := scheduler.New(d)
		if err != nil {
			return nil, err
		}
		return []server.Module{m}, nil
	})
}
