// Package cli is the `tenants` command: create, migrate, inspect, suspend, resume and
// delete tenant schemas. It is a package rather than a main so the all-in-one binary can
// serve it as `streamspace tenants …` and tests can drive it in-process.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/config"
	"streamspace.dev/libs/tenantdb"
	"streamspace.dev/tenants"
)

// Exit statuses of Run.
const (
	ExitOK    = 0 // the command did what was asked
	ExitError = 1 // the command failed; the message says why
	ExitUsage = 2 // the command line was wrong, or a deletion was not confirmed
)

// usageError is a mistake on the command line, found before anything was changed. Run
// exits ExitUsage for it.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// command is one subcommand: its flags are defined by setup, which returns the function
// that runs it once the flags are parsed.
type command struct {
	name     string
	synopsis string // flags after the command name, for the usage text
	summary  string
	setup    func(fs *flag.FlagSet) func(ctx context.Context, s *session) error
}

var commands = []command{
	{"create", "--slug SLUG [--name NAME]", "register a tenant and create its schema (idempotent by slug)", setupCreate},
	{"migrate", "--all [--workers N] | --tenant ID|SLUG", "migrate the platform schema, then tenant schemas to the target version", setupMigrate},
	{"status", "", "show each tenant's schema version against the target", setupStatus},
	{"list", "", "list tenants", setupList},
	{"suspend", "--tenant ID|SLUG", "refuse a tenant's requests until it is resumed", setupSetStatus(tenants.Suspended)},
	{"resume", "--tenant ID|SLUG", "serve a suspended tenant again", setupSetStatus(tenants.Active)},
	{"delete", "--tenant ID|SLUG --confirm SLUG", "drop a tenant's schema and all its data", setupDelete},
}

// Usage writes the command's overview to w.
func Usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: tenants <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Administers StreamSpace tenants: one PostgreSQL schema per tenant.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	for _, c := range commands {
		fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Every command takes --database-url (env DATABASE_URL) and --json.")
	fmt.Fprintln(w, "Run 'tenants <command> --help' for its flags.")
	fmt.Fprintln(w, "Exit status: 0 success, 1 failure, 2 usage error or unconfirmed deletion.")
}

func commandUsage(w io.Writer, c command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: tenants %s [flags]", c.name)
	if c.synopsis != "" {
		fmt.Fprintf(w, "\n       tenants %s %s", c.name, c.synopsis)
	}
	fmt.Fprintf(w, "\n\n%s.\n\nFlags:\n", strings.ToUpper(c.summary[:1])+c.summary[1:])
	config.PrintDefaults(w, fs)
}

// Run runs the tenants command with args (without the program name) and returns its exit
// status. ctx should be cancelled on SIGINT: a migration fan-out then stops handing out
// tenants, lets the ones in flight finish or roll back, and reports what it did.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		Usage(stderr)
		return ExitUsage
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		Usage(stdout)
		return ExitOK
	}
	var cmd command
	for _, c := range commands {
		if c.name == args[0] {
			cmd = c
		}
	}
	if cmd.name == "" {
		fmt.Fprintf(stderr, "tenants: unknown command %q\n\n", args[0])
		Usage(stderr)
		return ExitUsage
	}

	fs := flag.NewFlagSet("tenants "+cmd.name, flag.ContinueOnError)
	// Parse errors and help are printed below, with the command's own usage text.
	fs.SetOutput(io.Discard)
	s := &session{stdout: stdout, stderr: stderr}
	config.String(fs, &s.url, "database-url", "DATABASE_URL", "",
		"PostgreSQL URL of the platform database (required), e.g. postgres://user@host:5432/streamspace")
	config.Bool(fs, &s.json, "json", "", false, "print one JSON document on stdout instead of tables")
	run := cmd.setup(fs)
	if err := config.Parse(fs, args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			commandUsage(stdout, cmd, fs)
			return ExitOK
		}
		fmt.Fprintf(stderr, "tenants %s: %v\n\n", cmd.name, err)
		commandUsage(stderr, cmd, fs)
		return ExitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "tenants %s: unexpected argument %q\n\n", cmd.name, fs.Arg(0))
		commandUsage(stderr, cmd, fs)
		return ExitUsage
	}
	defer s.close()
	return s.exit(run(ctx, s))
}

// session holds what one invocation shares between parsing and running.
type session struct {
	stdout, stderr io.Writer
	url            string
	json           bool
	maxConns       int32

	pool    *pgxpool.Pool
	manager *tenants.Manager
}

// connect opens the pool and the manager and checks that the database holds the tenant
// registry. Commands call it after checking their own flags, so a usage mistake is
// reported before any connection is attempted.
func (s *session) connect(ctx context.Context) (*tenants.Manager, error) {
	m, err := s.open(ctx)
	if err != nil {
		return nil, err
	}
	// Every command but migrate needs the registry; without this check an empty database
	// answers with a bare "relation does not exist".
	var registry *string
	if err := s.pool.QueryRow(ctx, "SELECT to_regclass('platform.tenants')::text").Scan(&registry); err != nil {
		return nil, fmt.Errorf("reading the tenant registry: %w", err)
	}
	if registry == nil {
		return nil, &hinted{err: errors.New("the database has no tenant registry (platform.tenants)"),
			hint: "check --database-url, or run 'tenants migrate --all' to set up the platform schema"}
	}
	return m, nil
}

// open opens the pool and the manager, without checking the platform schema.
func (s *session) open(ctx context.Context) (*tenants.Manager, error) {
	if s.url == "" {
		return nil, usagef("no database: set --database-url or DATABASE_URL")
	}
	cfg, err := pgxpool.ParseConfig(s.url)
	if err != nil {
		return nil, fmt.Errorf("parsing --database-url: %w", err)
	}
	cfg.MaxConns = max(cfg.MaxConns, s.maxConns)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to PostgreSQL: %w", err)
	}
	s.pool = pool
	m, err := tenants.New(pool, tenants.WithActor("tenants-cli"))
	if err != nil {
		return nil, err
	}
	s.manager = m
	return m, nil
}

func (s *session) close() {
	if s.pool != nil {
		s.pool.Close()
	}
}

// exit prints err, if any, and returns the exit status for it.
func (s *session) exit(err error) int {
	if err == nil {
		return ExitOK
	}
	fmt.Fprintf(s.stderr, "tenants: %s\n", message(err))
	var h *hinted
	if errors.As(err, &h) {
		fmt.Fprintf(s.stderr, "hint: %s\n", h.hint)
	}
	var ue *usageError
	if errors.As(err, &ue) {
		return ExitUsage
	}
	return ExitError
}

// message renders err for an operator. Coded errors show their message and field
// reasons: that text is written for people, while Error() prefixes the code. Uncoded
// errors show in full; an operator running this tool needs the SQL error.
func message(err error) string {
	e, ok := apperr.As(err)
	if !ok {
		return err.Error()
	}
	msg := e.Message
	for _, f := range e.Fields {
		msg += fmt.Sprintf("; %s: %s", f.Field, f.Reason)
	}
	return msg
}

// hinted is an error with advice for the operator, printed on a line of its own.
type hinted struct {
	err  error
	hint string
}

func (h *hinted) Error() string { return h.err.Error() }
func (h *hinted) Unwrap() error { return h.err }

// printJSON writes v as the command's one JSON document.
func (s *session) printJSON(v any) error {
	enc := json.NewEncoder(s.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table returns a writer that aligns tab-separated columns; the caller flushes it.
func (s *session) table() *tabwriter.Writer {
	return tabwriter.NewWriter(s.stdout, 0, 0, 2, ' ', 0)
}

func requireTenant(ref string) error {
	if ref == "" {
		return usagef("--tenant is required: the tenant's ID or slug")
	}
	return nil
}

func setupCreate(fs *flag.FlagSet) func(context.Context, *session) error {
	var slug, name string
	config.String(fs, &slug, "slug", "", "",
		"the tenant's slug (required): 3 to 40 lowercase letters, digits and single hyphens, starting with a letter")
	config.String(fs, &name, "name", "", "", "the tenant's display name; the slug when empty")
	return func(ctx context.Context, s *session) error {
		if slug == "" {
			return usagef("--slug is required")
		}
		if name == "" {
			name = slug
		}
		m, err := s.connect(ctx)
		if err != nil {
			return err
		}
		t, created, err := m.Create(ctx, slug, name)
		if err != nil {
			return fmt.Errorf("creating tenant %q: %w", slug, err)
		}
		if s.json {
			return s.printJSON(struct {
				Created bool           `json:"created"`
				Tenant  tenants.Tenant `json:"tenant"`
			}{created, t})
		}
		verb := "created"
		if !created {
			verb = "already exists:"
		}
		_, err = fmt.Fprintf(s.stdout, "%s tenant %s (id %s, schema %s, status %s, version %d)\n",
			verb, t.Slug, t.ID, t.ID.Schema(), t.Status, t.SchemaVersion)
		return err
	}
}

// migrateResult is one tenant's line of a migration, in text and JSON.
type migrateResult struct {
	Tenant  string `json:"tenant"`
	Slug    string `json:"slug,omitempty"`
	From    int64  `json:"from"`
	To      int64  `json:"to"`
	Applied bool   `json:"applied"`
	Error   string `json:"error,omitempty"`
}

// resumeHint tells the operator what to do after a failed or interrupted migration.
const resumeHint = "fix the cause and run the same command again; it resumes where this run stopped, " +
	"and tenants already at the target are skipped"

func setupMigrate(fs *flag.FlagSet) func(context.Context, *session) error {
	var all bool
	var ref string
	var workers int
	config.Bool(fs, &all, "all", "", false, "migrate every active or suspended tenant that lags behind the target")
	config.String(fs, &ref, "tenant", "", "", "migrate only this tenant (ID or slug)")
	config.Int(fs, &workers, "workers", "TENANTS_MIGRATE_WORKERS", 4, "with --all, migrate this many tenants at once")
	return func(ctx context.Context, s *session) error {
		switch {
		case all == (ref != ""):
			return usagef("give exactly one of --all or --tenant")
		case workers < 1:
			return usagef("--workers must be at least 1")
		}
		// Each worker holds one pooled connection (its tenant's lock); one more serves
		// the fan-out's own queries.
		s.maxConns = int32(min(workers+1, 1000))
		m, err := s.open(ctx)
		if err != nil {
			return err
		}
		if err := tenants.MigratePlatform(ctx, s.pool); err != nil {
			return migrateFailed(err)
		}
		if ref != "" {
			return s.migrateOne(ctx, m, ref)
		}
		return s.migrateAll(ctx, m, workers)
	}
}

func migrateFailed(err error) error {
	return &hinted{err: err, hint: resumeHint}
}

// resultLine is one fixed-width line per tenant, written as results arrive: a
// tabwriter would hold every line back until the fan-out ends.
func resultLine(r migrateResult) string {
	slug := r.Slug
	if slug == "" {
		slug = "-"
	}
	outcome := "current"
	switch {
	case r.Error != "":
		outcome = "FAILED"
	case r.Applied:
		outcome = "migrated"
	}
	line := fmt.Sprintf("%-9s %-12s  %-40s  %d -> %d", outcome, r.Tenant, slug, r.From, r.To)
	if r.Error != "" {
		line += "  " + r.Error
	}
	return line
}

func (s *session) migrateOne(ctx context.Context, m *tenants.Manager, ref string) error {
	before, err := m.Get(ctx, ref)
	if err != nil {
		return err
	}
	migErr := m.Migrate(ctx, string(before.ID))
	r := migrateResult{Tenant: string(before.ID), Slug: string(before.Slug), From: before.SchemaVersion, To: before.SchemaVersion}
	// The registry records the version the schema reached even when a migration failed.
	if after, err := m.Get(context.WithoutCancel(ctx), string(before.ID)); err == nil {
		r.To = after.SchemaVersion
		r.Applied = after.SchemaVersion != before.SchemaVersion
	}
	if migErr != nil {
		r.Error = message(migErr)
	}
	if s.json {
		if err := s.printJSON(struct {
			Target  int64           `json:"target"`
			Results []migrateResult `json:"results"`
		}{m.Target(), []migrateResult{r}}); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(s.stdout, resultLine(r))
	}
	if migErr != nil {
		return migrateFailed(fmt.Errorf("migrating tenant %s: %w", before.Slug, migErr))
	}
	return nil
}

func (s *session) migrateAll(ctx context.Context, m *tenants.Manager, workers int) error {
	// Slugs are for the operator's eyes; the fan-out itself reports IDs only.
	list, err := m.List(ctx)
	if err != nil {
		return err
	}
	slugs := make(map[string]string, len(list))
	for _, t := range list {
		slugs[string(t.ID)] = string(t.Slug)
	}
	var mu sync.Mutex
	results := []migrateResult{}
	report, migErr := m.MigrateAll(ctx, tenants.MigrateOptions{Workers: workers, OnResult: func(r tenants.Result) {
		mr := migrateResult{Tenant: string(r.Tenant), Slug: slugs[string(r.Tenant)], From: r.From, To: r.To, Applied: r.Applied}
		if r.Err != nil {
			mr.Error = message(r.Err)
		}
		mu.Lock()
		defer mu.Unlock()
		results = append(results, mr)
		if !s.json {
			fmt.Fprintln(s.stdout, resultLine(mr))
		}
	}})
	// OnResult has returned for every tenant by now: MigrateAll waits for its workers.
	if s.json {
		sort.Slice(results, func(i, j int) bool { return results[i].Tenant < results[j].Tenant })
		doc := struct {
			Target   int64           `json:"target"`
			Migrated int             `json:"migrated"`
			Current  int             `json:"current"`
			Failed   int             `json:"failed"`
			Results  []migrateResult `json:"results"`
			Error    string          `json:"error,omitempty"`
		}{Target: report.Target, Migrated: report.Migrated, Current: report.Current, Failed: len(report.Failed), Results: results}
		if migErr != nil {
			doc.Error = message(migErr)
		}
		if err := s.printJSON(doc); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(s.stdout, "target version %d: %d migrated, %d already current, %d failed\n",
			m.Target(), report.Migrated, report.Current, len(report.Failed))
	}
	if migErr != nil {
		return migrateFailed(migErr)
	}
	return nil
}

func setupStatus(fs *flag.FlagSet) func(context.Context, *session) error {
	return func(ctx context.Context, s *session) error {
		m, err := s.connect(ctx)
		if err != nil {
			return err
		}
		r, err := m.Status(ctx)
		if err != nil {
			return err
		}
		if s.json {
			return s.printJSON(r)
		}
		tw := s.table()
		fmt.Fprintln(tw, "SLUG\tID\tSTATUS\tVERSION\tTARGET\tLAGGING")
		for _, t := range r.Tenants {
			mark := "no"
			if t.SchemaVersion < r.Target {
				mark = "yes"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\n", t.Slug, t.ID, t.Status, t.SchemaVersion, r.Target, mark)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(s.stdout, "%d of %d tenants behind target version %d", len(r.Lagging), len(r.Tenants), r.Target)
		if len(r.Lagging) > 0 {
			fmt.Fprint(s.stdout, "; run 'tenants migrate --all'")
		}
		_, err = fmt.Fprintln(s.stdout)
		return err
	}
}

func setupList(fs *flag.FlagSet) func(context.Context, *session) error {
	return func(ctx context.Context, s *session) error {
		m, err := s.connect(ctx)
		if err != nil {
			return err
		}
		list, err := m.List(ctx)
		if err != nil {
			return err
		}
		if s.json {
			if list == nil {
				list = []tenants.Tenant{}
			}
			return s.printJSON(struct {
				Tenants []tenants.Tenant `json:"tenants"`
			}{list})
		}
		tw := s.table()
		fmt.Fprintln(tw, "SLUG\tID\tNAME\tSTATUS\tVERSION\tCREATED\tLAST OPERATION")
		for _, t := range list {
			last := t.LastOperation
			if t.LastError != "" {
				last += " (failed)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", t.Slug, t.ID, t.Name, t.Status, t.SchemaVersion,
				t.CreatedAt.UTC().Format(time.DateTime), last)
		}
		return tw.Flush()
	}
}

func setupSetStatus(status tenants.Status) func(*flag.FlagSet) func(context.Context, *session) error {
	return func(fs *flag.FlagSet) func(context.Context, *session) error {
		var ref string
		config.String(fs, &ref, "tenant", "", "", "the tenant's ID or slug (required)")
		return func(ctx context.Context, s *session) error {
			if err := requireTenant(ref); err != nil {
				return err
			}
			m, err := s.connect(ctx)
			if err != nil {
				return err
			}
			t, err := m.Get(ctx, ref)
			if err != nil {
				return err
			}
			if err := m.SetStatus(ctx, t.ID, status); err != nil {
				return err
			}
			if t, err = m.Get(ctx, string(t.ID)); err != nil {
				return err
			}
			if s.json {
				return s.printJSON(struct {
					Tenant tenants.Tenant `json:"tenant"`
				}{t})
			}
			// Services cache each tenant's status, so the change is not instant everywhere.
			_, err = fmt.Fprintf(s.stdout, "tenant %s (id %s) is now %s; every service sees it within %s\n",
				t.Slug, t.ID, t.Status, tenantdb.DefaultStatusTTL)
			return err
		}
	}
}

func setupDelete(fs *flag.FlagSet) func(context.Context, *session) error {
	var ref, confirm string
	config.String(fs, &ref, "tenant", "", "", "the tenant's ID or slug (required)")
	config.String(fs, &confirm, "confirm", "", "", "the tenant's slug again (required): deletion drops all its data for good")
	return func(ctx context.Context, s *session) error {
		if err := requireTenant(ref); err != nil {
			return err
		}
		if confirm == "" {
			return usagef("refusing to delete %q without --confirm repeating the tenant's slug; nothing was deleted", ref)
		}
		m, err := s.connect(ctx)
		if err != nil {
			return err
		}
		t, err := m.Get(ctx, ref)
		if err != nil {
			return err
		}
		// Manager.Delete checks too; checking here makes the refusal a usage error with
		// the slug the operator has to type.
		if confirm != string(t.Slug) {
			return usagef("refusing to delete tenant %s: --confirm %q does not match its slug %q; nothing was deleted",
				t.ID, confirm, t.Slug)
		}
		if err := m.Delete(ctx, string(t.ID), confirm); err != nil {
			return err
		}
		t.Status = tenants.Deleted
		if s.json {
			return s.printJSON(struct {
				Deleted tenants.Tenant `json:"deleted"`
			}{t})
		}
		_, err = fmt.Fprintf(s.stdout, "deleted tenant %s (id %s): schema %s dropped\n", t.Slug, t.ID, t.ID.Schema())
		return err
	}
}
