// Command sessions runs StreamSpace's sessions service on its own. See --help for its settings.
package main

import (
	"streamspace.dev/libs/server"
	"streamspace.dev/services/sessions"
)

func main() {
	server.Main(sessions.Name, func(d server.Deps) ([]server.Module, error) {
		m, err := sessions.New(d)
		if err != nil {
			return nil, err
		}
		return []server.Module{m}, nil
	})
}
