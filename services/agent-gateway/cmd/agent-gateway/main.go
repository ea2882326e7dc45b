// Command agent-gateway runs StreamSpace's agent-gateway service on its own. See --help for its settings.
package main

import (
	"streamspace.dev/libs/server"
	gateway "streamspace.dev/services/agent-gateway"
)

func main() {
	server.Main(gateway.Name, func(d server.Deps) ([]server.Module, error) {
		m, err := gateway.New(d)
		if err != nil {
			return nil, err
		}
		return []server.Module{m}, nil
	})
}
