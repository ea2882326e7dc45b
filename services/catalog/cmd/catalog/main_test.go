package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"streamspace.dev/services/catalog"
	"streamspace.dev/services/catalog/postgres"
	"streamspace.dev/tenants/tenantstest"
)

// TestImportFolder runs `catalog import` on a folder of v1 manifests twice, for a tenant
// and for the platform, and checks the reports and the stored templates.
func TestImportFolder(t *testing.T) {
	env := tenantstest.New(t)
	acme, acmeCtx := env.Tenant(t, "acme")
	dir := t.TempDir()
	for _, f := range []string{"firefox.yaml", "code-server.yaml", "forms.yaml"} {
		b, err := os.ReadFile(filepath.Join("../../manifest/testdata", f))
		if err != nil {
			t.Fatal(err)
		}
		sub := filepath.Join(dir, strings.TrimSuffix(f, ".yaml"))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sub, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("not a manifest"), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (int, string) {
		var out, errOut bytes.Buffer
		code := runImport(context.Background(), args, &out, &errOut)
		return code, out.String() + errOut.String()
	}
	code, out := run("--database-url", env.URL, "--tenant", "acme", dir)
	if code != 0 || !strings.Contains(out, "5 created, 0 updated, 0 unchanged, 0 rejected") {
		t.Fatalf("first import (%d):\n%s", code, out)
	}
	code, out = run(dir, "--tenant", "acme", "--database-url", env.URL)
	if code != 0 || !strings.Contains(out, "0 created, 0 updated, 5 unchanged, 0 rejected") {
		t.Fatalf("second import (%d):\n%s", code, out)
	}
	store := postgres.New(env.DB)
	if got, err := store.Get(acmeCtx, catalog.ScopeTenant, "firefox-browser", false); err != nil || got.Scope != catalog.ScopeTenant {
		t.Fatalf("tenant %s: %+v %v", acme.ID, got, err)
	}
	code, out = run("--database-url", env.URL, "--platform", filepath.Join("../../manifest/testdata", "rejects.yaml"))
	if code != 1 || !strings.Contains(out, "1 created, 0 updated, 0 unchanged, 8 rejected") || !strings.Contains(out, "70000 is outside 1-65535") {
		t.Fatalf("platform import of rejects (%d):\n%s", code, out)
	}
	if _, err := store.Get(context.Background(), catalog.ScopePlatform, "survivor", false); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{dir}, {"--database-url", env.URL, dir}, {"--database-url", env.URL, "--platform", "--tenant", "acme", dir},
		{"--database-url", env.URL, "--tenant", "acme"}} {
		if code, out := run(args...); code != 2 {
			t.Errorf("%v: exit %d, want 2:\n%s", args, code, out)
		}
	}
	if code, _ := run("--database-url", env.URL, "--tenant", "nobody", dir); code != 1 {
		t.Errorf("unknown tenant: exit %d", code)
	}
}
