// Command catalog runs StreamSpace's catalog service on its own. See --help for its settings.
package main

import (
	"streamspace.dev/libs/server"
	"streamspace.dev/services/catalog"
)

func main() {
	server.Main(catalog.Name, func(d server.Deps) ([]server.Module, error) {
		m, err := catalog.New(d)
		if err != nil {
			return nil, err
		}
		return []server.Module{m}, nil
	})
}
