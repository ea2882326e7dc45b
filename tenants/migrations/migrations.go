// Package migrations embeds StreamSpace's SQL migrations (goose format).
//
// Platform migrations name their objects with the platform schema explicitly. Tenant
// migrations never name a schema: they run with search_path set to one tenant's schema,
// so the same files build every tenant. Every file has an Up and a Down section, and each
// runs in one transaction, so a crash never leaves half a migration behind.
package migrations

import (
	"embed"
	"io/fs"
)

//go:embed platform/*.sql tenant/*.sql
var files embed.FS

// Platform returns the migrations of the platform schema.
func Platform() fs.FS { return sub("platform") }

// Tenant returns the migrations applied to every tenant schema.
func Tenant() fs.FS { return sub("tenant") }

func sub(dir string) fs.FS {
	f, err := fs.Sub(files, dir)
	if err != nil {
		panic(err) // the directory is embedded at build time
	}
	return f
}
