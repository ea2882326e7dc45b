// Command tenants administers StreamSpace tenant schemas: create, migrate, status, list,
// suspend, resume and delete. Run `tenants --help` for the commands and
// `tenants <command> --help` for their flags. The all-in-one binary serves the same
// command as `streamspace tenants`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"streamspace.dev/tenants/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// The first signal cancels ctx and lets a fan-out stop cleanly; restoring the
		// default handling means a second Ctrl-C kills at once.
		<-ctx.Done()
		stop()
	}()
	code := cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
