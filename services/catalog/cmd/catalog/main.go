// Command catalog runs StreamSpace's catalog service on its own, or imports StreamSpace v1
// Template manifests into a catalog:
//
//	catalog [flags]                                       serve (see catalog --help)
//	catalog import (--tenant SLUG | --platform) PATH...   import files or folders of manifests
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/config"
	"streamspace.dev/libs/server"
	"streamspace.dev/libs/tenantdb"
	"streamspace.dev/services/catalog"
	"streamspace.dev/services/catalog/manifest"
	"streamspace.dev/services/catalog/module"
	"streamspace.dev/services/catalog/postgres"
	"streamspace.dev/tenants"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "import" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := runImport(ctx, os.Args[2:], os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	if len(os.Args) > 1 && (os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "-help") {
		fmt.Fprint(os.Stderr, "catalog [flags]          serve the catalog API (flags below)\n"+
			"catalog import ...       import v1 Template manifests (see catalog import --help)\n\n")
	}
	server.Main(catalog.Name, func(d server.Deps) ([]server.Module, error) {
		m, err := module.New(d)
		if err != nil {
			return nil, err
		}
		return []server.Module{m}, nil
	})
}

const importUsage = `
catalog import [flags] (--tenant SLUG | --platform) PATH...

Imports StreamSpace v1 Template manifests (YAML; kind Template; apiVersion
stream.space/v1alpha1 or stream.streamspace.io/v1alpha1) into a tenant's catalog or the
platform catalog. PATH is a file or a folder, searched recursively for *.yaml and *.yml.
Each document is created, updated, left unchanged or rejected on its own; the command
exits 1 when any document was rejected.
`

// runImport is the import subcommand; it returns the exit code.
func runImport(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("catalog import", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var dbURL, slug string
	var platform bool
	config.String(fs, &dbURL, "database-url", "DATABASE_URL", "", "PostgreSQL URL (postgres://user@host:port/db)")
	config.String(fs, &slug, "tenant", "", "", "import into this tenant's catalog (its slug)")
	config.Bool(fs, &platform, "platform", "", false, "import into the platform catalog")
	// Flags may come before or after the paths.
	var paths []string
	for {
		if err := config.Parse(fs, args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fmt.Fprint(stderr, importUsage)
				return 0
			}
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		paths = append(paths, fs.Arg(0))
		args = fs.Args()[1:]
	}
	switch {
	case dbURL == "":
		fmt.Fprintln(stderr, "catalog import: --database-url (or DATABASE_URL) is required")
		return 2
	case (slug == "") == !platform:
		fmt.Fprintln(stderr, "catalog import: give exactly one of --tenant SLUG and --platform")
		return 2
	case len(paths) == 0:
		fmt.Fprintln(stderr, "catalog import: name at least one file or folder")
		return 2
	}
	db, err := tenantdb.Open(ctx, dbURL, nil)
	if err != nil {
		fmt.Fprintf(stderr, "catalog import: %v\n", err)
		return 1
	}
	defer db.Close()

	scope := catalog.ScopePlatform
	if slug != "" {
		m, err := tenants.New(db.Pool())
		if err != nil {
			fmt.Fprintf(stderr, "catalog import: %v\n", err)
			return 1
		}
		t, err := m.Get(ctx, slug)
		if err != nil {
			fmt.Fprintf(stderr, "catalog import: tenant %s: %v\n", slug, err)
			return 1
		}
		// Whoever holds the database URL may write any tenant's data; acting as the system
		// inside the named tenant keeps the import on tenantdb's one door all the same.
		ctx = auth.AsSystem(ctx, t.ID, "catalog import")
		scope = catalog.ScopeTenant
	}
	files, err := manifestFiles(paths)
	if err != nil {
		fmt.Fprintf(stderr, "catalog import: %v\n", err)
		return 1
	}
	store := postgres.New(db)
	logger := slog.New(slog.NewJSONHandler(stderr, nil))
	var total catalog.ImportReport
	for _, f := range files {
		for _, r := range importFile(ctx, store, scope, f, logger).Results {
			total.Add(r)
			line := fmt.Sprintf("%s:%d\t%s\t%s", r.Source, r.Line, r.Outcome, r.Name)
			if r.Outcome == catalog.OutcomeRejected {
				line += "\t" + r.Reason
				for _, fe := range r.Errors {
					line += fmt.Sprintf("; %s: %s", fe.Field, fe.Reason)
				}
			} else {
				line += fmt.Sprintf("\tversion %d", r.Version)
			}
			fmt.Fprintln(stdout, line)
		}
	}
	fmt.Fprintf(stdout, "%d created, %d updated, %d unchanged, %d rejected\n", total.Created, total.Updated, total.Unchanged, total.Rejected)
	if total.Rejected > 0 {
		return 1
	}
	return 0
}

// importFile imports one file; a file that cannot be read or is too large is one rejected
// result, and the other files go on.
func importFile(ctx context.Context, store catalog.Store, scope catalog.Scope, path string, logger *slog.Logger) catalog.ImportReport {
	rejected := func(reason string) catalog.ImportReport {
		var r catalog.ImportReport
		r.Add(catalog.ImportResult{Source: path, Outcome: catalog.OutcomeRejected, Reason: reason})
		return r
	}
	info, err := os.Stat(path)
	if err != nil {
		return rejected(err.Error())
	}
	if info.Size() > manifest.MaxStreamBytes {
		return rejected(fmt.Sprintf("file is %d bytes; the limit is %d", info.Size(), manifest.MaxStreamBytes))
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return rejected(err.Error())
	}
	docs, err := manifest.Parse(data)
	if err != nil {
		return rejected(manifest.Describe(err))
	}
	return catalog.ImportDocuments(ctx, store, scope, path, docs, logger)
}

// manifestFiles expands folders into their *.yaml and *.yml files, in lexical order.
func manifestFiles(paths []string) ([]string, error) {
	var out []string
	for _, p := range paths {
		info, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !info.IsDir() {
			out = append(out, p)
			continue
		}
		var found []string
		err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() && (strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
				found = append(found, path)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		slices.Sort(found)
		out = append(out, found...)
	}
	return out, nil
}
