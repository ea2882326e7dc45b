package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/tenants"
	"streamspace.dev/tenants/cli"
	"streamspace.dev/tenants/tenantstest"
)

// run drives the command in-process and returns its exit status and output.
func run(t *testing.T, ctx context.Context, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = cli.Run(ctx, args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// withDB appends the database flag, so each test reaches its own database whatever the
// process environment says.
func withDB(env *tenantstest.Env, args ...string) []string {
	return append(args, "--database-url", env.URL)
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errOut := run(t, context.Background(), args...)
	if code != cli.ExitOK {
		t.Fatalf("%v: exit %d\nstdout: %s\nstderr: %s", args, code, out, errOut)
	}
	return out
}

func decode[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("decoding %q: %v", s, err)
	}
	return v
}

func TestCreateIsIdempotent(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	first := mustRun(t, withDB(env, "create", "--slug", "acme", "--name", "Acme Streaming")...)
	if !strings.HasPrefix(first, "created tenant acme ") {
		t.Fatalf("first create: %q", first)
	}
	second := mustRun(t, withDB(env, "create", "--slug", "acme", "--name", "Acme Streaming")...)
	if !strings.HasPrefix(second, "already exists: tenant acme ") {
		t.Fatalf("second create: %q", second)
	}
	doc := decode[struct {
		Created bool           `json:"created"`
		Tenant  tenants.Tenant `json:"tenant"`
	}](t, mustRun(t, withDB(env, "create", "--slug", "acme", "--json")...))
	if doc.Created || doc.Tenant.Slug != "acme" || doc.Tenant.Status != tenants.Active || doc.Tenant.Name != "Acme Streaming" {
		t.Fatalf("third create as JSON: %+v", doc)
	}
	list, err := env.Tenants.List(context.Background())
	if err != nil || len(list) != 1 {
		t.Fatalf("registry holds %d tenants (%v), want 1", len(list), err)
	}
}

func TestListAndStatus(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	ctx := context.Background()
	for _, slug := range []string{"bravo", "alpha"} {
		mustRun(t, withDB(env, "create", "--slug", slug)...)
	}
	// Pretend bravo's schema is one version behind, as during a rolling migration.
	if _, err := env.Pool.Exec(ctx, "UPDATE platform.tenants SET schema_version = schema_version - 1 WHERE slug = 'bravo'"); err != nil {
		t.Fatal(err)
	}

	text := mustRun(t, withDB(env, "list")...)
	lines := strings.Split(strings.TrimSpace(text), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "SLUG") ||
		!strings.HasPrefix(lines[1], "alpha ") || !strings.HasPrefix(lines[2], "bravo ") {
		t.Fatalf("list:\n%s", text)
	}
	// The columns are aligned: each tenant's ID starts under the ID header.
	for i, slug := range []string{"alpha", "bravo"} {
		tn, err := env.Tenants.Get(ctx, slug)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Index(lines[i+1], string(tn.ID)) != strings.Index(lines[0], "ID") {
			t.Fatalf("list columns are not aligned:\n%s", text)
		}
	}
	list := decode[struct {
		Tenants []tenants.Tenant `json:"tenants"`
	}](t, mustRun(t, withDB(env, "list", "--json")...))
	if len(list.Tenants) != 2 || list.Tenants[0].Slug != "alpha" || list.Tenants[1].Slug != "bravo" {
		t.Fatalf("list --json: %+v", list)
	}

	status := mustRun(t, withDB(env, "status")...)
	if !strings.Contains(status, "1 of 2 tenants behind target version") {
		t.Fatalf("status:\n%s", status)
	}
	for _, line := range strings.Split(status, "\n") {
		if strings.HasPrefix(line, "alpha ") && !strings.HasSuffix(line, " no") {
			t.Fatalf("alpha marked as lagging:\n%s", status)
		}
		if strings.HasPrefix(line, "bravo ") && !strings.HasSuffix(line, " yes") {
			t.Fatalf("bravo not marked as lagging:\n%s", status)
		}
	}
	report := decode[tenants.VersionReport](t, mustRun(t, withDB(env, "status", "--json")...))
	if report.Target != env.Tenants.Target() || len(report.Tenants) != 2 || len(report.Lagging) != 1 || report.Lagging[0].Slug != "bravo" {
		t.Fatalf("status --json: %+v", report)
	}

	// migrate --all brings bravo's record back in line, and status then shows nobody behind.
	out := mustRun(t, withDB(env, "migrate", "--all", "--workers", "2")...)
	if !strings.Contains(out, "bravo") || !strings.Contains(out, "0 failed") {
		t.Fatalf("migrate --all:\n%s", out)
	}
	if status := mustRun(t, withDB(env, "status")...); !strings.Contains(status, "0 of 2 tenants behind") {
		t.Fatalf("status after migrate:\n%s", status)
	}
	one := decode[struct {
		Results []struct {
			Slug  string `json:"slug"`
			To    int64  `json:"to"`
			Error string `json:"error"`
		} `json:"results"`
	}](t, mustRun(t, withDB(env, "migrate", "--tenant", "alpha", "--json")...))
	if len(one.Results) != 1 || one.Results[0].Slug != "alpha" || one.Results[0].To != env.Tenants.Target() || one.Results[0].Error != "" {
		t.Fatalf("migrate --tenant --json: %+v", one)
	}
}

func TestMigrateInterruptedSaysHowToResume(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	code, _, errOut := run(t, ctx, withDB(env, "migrate", "--all")...)
	if code != cli.ExitError || !strings.HasPrefix(errOut, "tenants: ") || !strings.Contains(errOut, "run the same command again") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
}

func TestHostileSlugChangesNothing(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	ctx := context.Background()
	snapshot := func() string {
		var s string
		err := env.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM platform.tenants)::text || '/' ||
			(SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace)`).Scan(&s)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	before := snapshot()
	for _, args := range [][]string{
		{"create", "--slug", `x"; drop schema public; --`},
		{"create", "--slug", "acme", "--name", "line\nbreak"},
		{"delete", "--tenant", `x"; drop schema public; --`, "--confirm", `x"; drop schema public; --`},
		{"migrate", "--tenant", `x"; drop schema public; --`},
		{"suspend", "--tenant", `x"; drop schema public; --`},
	} {
		code, _, errOut := run(t, ctx, withDB(env, args...)...)
		if code == cli.ExitOK || !strings.HasPrefix(errOut, "tenants: ") {
			t.Errorf("%q: exit %d, stderr %q", args, code, errOut)
		}
	}
	code, _, errOut := run(t, ctx, withDB(env, "create", "--slug", `x"; drop schema public; --`)...)
	if code != cli.ExitError || !strings.Contains(errOut, "invalid tenant slug; slug: must be") {
		t.Errorf("hostile slug: exit %d, stderr %q", code, errOut)
	}
	if after := snapshot(); after != before {
		t.Fatalf("hostile input changed the database:\n before %s\n after  %s", before, after)
	}
}

func TestDeleteNeedsConfirmation(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	ctx := context.Background()
	mustRun(t, withDB(env, "create", "--slug", "doomed")...)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no confirm", []string{"delete", "--tenant", "doomed"}, "without --confirm"},
		{"wrong confirm", []string{"delete", "--tenant", "doomed", "--confirm", "other"}, `does not match its slug "doomed"`},
		{"empty confirm", []string{"delete", "--tenant", "doomed", "--confirm", ""}, "without --confirm"},
	}
	for _, tc := range cases {
		code, out, errOut := run(t, ctx, withDB(env, tc.args...)...)
		if code != cli.ExitUsage || out != "" || !strings.Contains(errOut, tc.want) || !strings.Contains(errOut, "nothing was deleted") {
			t.Errorf("%s: exit %d, stdout %q, stderr %q", tc.name, code, out, errOut)
		}
		if _, err := env.Tenants.Get(ctx, "doomed"); err != nil {
			t.Fatalf("%s: tenant gone: %v", tc.name, err)
		}
	}
	out := mustRun(t, withDB(env, "delete", "--tenant", "doomed", "--confirm", "doomed")...)
	if !strings.HasPrefix(out, "deleted tenant doomed ") {
		t.Fatalf("delete: %q", out)
	}
	if _, err := env.Tenants.Get(ctx, "doomed"); !apperr.IsCode(err, apperr.NotFound) {
		t.Fatalf("after delete, Get = %v", err)
	}
	code, _, errOut := run(t, ctx, withDB(env, "delete", "--tenant", "doomed", "--confirm", "doomed")...)
	if code != cli.ExitError || errOut != "tenants: tenant \"doomed\" not found\n" {
		t.Fatalf("second delete: exit %d, stderr %q", code, errOut)
	}
}

func TestSuspendAndResume(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	ctx := context.Background()
	mustRun(t, withDB(env, "create", "--slug", "sleepy")...)
	for _, step := range []struct {
		cmd  string
		want tenants.Status
	}{{"suspend", tenants.Suspended}, {"resume", tenants.Active}} {
		doc := decode[struct {
			Tenant tenants.Tenant `json:"tenant"`
		}](t, mustRun(t, withDB(env, step.cmd, "--tenant", "sleepy", "--json")...))
		got, err := env.Tenants.Get(ctx, "sleepy")
		if err != nil || got.Status != step.want || doc.Tenant.Status != step.want {
			t.Fatalf("%s: registry %s (%v), printed %s, want %s", step.cmd, got.Status, err, doc.Tenant.Status, step.want)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no command", nil, "Usage: tenants <command>"},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"unknown flag", []string{"list", "--nope"}, "flag provided but not defined: -nope"},
		{"stray argument", []string{"list", "acme"}, `unexpected argument "acme"`},
		{"create without slug", []string{"create", "--database-url", "postgres://x"}, "--slug is required"},
		{"migrate without target", []string{"migrate", "--database-url", "postgres://x"}, "exactly one of --all or --tenant"},
		{"migrate with both", []string{"migrate", "--all", "--tenant", "x", "--database-url", "postgres://x"}, "exactly one of --all or --tenant"},
		{"suspend without tenant", []string{"suspend", "--database-url", "postgres://x"}, "--tenant is required"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, out, errOut := run(t, context.Background(), tc.args...)
			if code != cli.ExitUsage || out != "" || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit 2 and %q", code, out, errOut, tc.want)
			}
		})
	}
}

func TestHelpListsEveryFlag(t *testing.T) {
	t.Parallel()
	code, out, _ := run(t, context.Background(), "--help")
	if code != cli.ExitOK {
		t.Fatalf("--help: exit %d", code)
	}
	for _, c := range []string{"create", "migrate", "status", "list", "suspend", "resume", "delete"} {
		if !strings.Contains(out, "\n  "+c+" ") {
			t.Errorf("--help does not list %s:\n%s", c, out)
		}
	}
	code, out, _ = run(t, context.Background(), "migrate", "--help")
	for _, want := range []string{"-database-url", "env DATABASE_URL", "-json", "-all", "-tenant", "-workers", "default 4"} {
		if code != cli.ExitOK || !strings.Contains(out, want) {
			t.Errorf("migrate --help (exit %d) lacks %q:\n%s", code, want, out)
		}
	}
}

// TestMissingDatabaseURL is not parallel: it clears DATABASE_URL for the process.
func TestMissingDatabaseURL(t *testing.T) {
	t.Setenv("DATABASE_URL", "")
	code, out, errOut := run(t, context.Background(), "list")
	if code != cli.ExitUsage || out != "" || errOut != "tenants: no database: set --database-url or DATABASE_URL\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestEmptyDatabaseSaysWhatIsMissing(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	if _, err := env.Pool.Exec(context.Background(), "DROP SCHEMA platform CASCADE"); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := run(t, context.Background(), withDB(env, "status")...)
	if code != cli.ExitError || !strings.Contains(errOut, "no tenant registry") || !strings.Contains(errOut, "hint: ") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	// migrate sets the platform schema up from nothing.
	mustRun(t, withDB(env, "migrate", "--all")...)
	mustRun(t, withDB(env, "create", "--slug", "fresh")...)
}
