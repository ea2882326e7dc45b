// Command identity runs StreamSpace's identity service on its own. See --help for its settings.
package main

import (
	"streamspace.dev/libs/server"
	"streamspace.dev/services/identity"
)

func main() {
	server.Main(identity.Name, func(d server.Deps) ([]server.Module, error) {
		m, err := identity.New(d)
		if err != nil {
			return nil, err
		}
		return []server.Module{m}, nil
	})
}
