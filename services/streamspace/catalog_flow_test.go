package streamspace_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/server"
	"streamspace.dev/services/identity"
	"streamspace.dev/services/streamspace"
	"streamspace.dev/tenants/tenantstest"
)

// TestCatalogFlowThroughAllInOne is issue 4's definition of done, driven through the
// all-in-one binary's real HTTP API with a token identity really issued: a tenant admin
// imports a folder of StreamSpace v1 manifests, then browses, edits and disables the
// templates.
func TestCatalogFlowThroughAllInOne(t *testing.T) {
	env := tenantstest.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- server.Run(ctx, server.Config{Name: "streamspace", Listen: "127.0.0.1:0", DatabaseURL: env.URL,
			LogLevel: "warn", ShutdownTimeout: 5 * time.Second, MaxConns: 8, Issuer: server.DefaultIssuer, Audience: auth.DefaultAudience},
			server.Options{Listener: ln, Before: func(ctx context.Context, pool *pgxpool.Pool) error {
				return streamspace.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
			}},
			func(d server.Deps) ([]server.Module, error) {
				return streamspace.Modules(d, identity.Config{KEK: testKEK})
			})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	})
	base := "http://" + ln.Addr().String()
	call := func(method, path, token string, body any, header http.Header, out any, want int) http.Header {
		t.Helper()
		var rd io.Reader
		req, _ := http.NewRequest(method, base+path, nil)
		switch b := body.(type) {
		case nil:
		case []byte:
			rd = bytes.NewReader(b)
			req.Header.Set("Content-Type", "application/yaml")
		default:
			j, _ := json.Marshal(b)
			rd = bytes.NewReader(j)
			req.Header.Set("Content-Type", "application/json")
		}
		if rd != nil {
			req.Body = io.NopCloser(rd)
		}
		for k, vs := range header {
			req.Header[k] = vs
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("%s %s: %d, want %d: %s", method, path, resp.StatusCode, want, b)
		}
		if out != nil {
			if err := json.Unmarshal(b, out); err != nil {
				t.Fatalf("%s %s: %v: %s", method, path, err, b)
			}
		}
		return resp.Header
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("never became ready")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// A tenant signs up; its owner is (at least) an admin.
	var signup identity.SignupResult
	call("POST", "/api/v1/signup", "", identity.Signup{TenantName: "Hooli", Slug: "hooli", Email: "gavin@hooli.test",
		Password: "a long enough passphrase"}, nil, &signup, 201)
	token := signup.Tokens.AccessToken

	// Import a folder of v1 manifests: every file of it, as one multi-document stream.
	type report struct {
		Results []struct {
			Name    string
			Outcome string
			Reason  string
		}
		Created, Updated, Unchanged, Rejected int
	}
	files, err := filepath.Glob("../catalog/manifest/testdata/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("manifests: %v", err)
	}
	var stream []byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		stream = append(append(stream, "\n---\n"...), b...)
	}
	var rep report
	call("POST", "/api/v1/templates:import", token, stream, nil, &rep, 200)
	if rep.Created != 7 || rep.Rejected != 9 {
		t.Fatalf("import: %+v", rep)
	}
	call("POST", "/api/v1/templates:import", token, stream, nil, &rep, 200)
	if rep.Unchanged != 7 || rep.Created != 0 || rep.Updated != 0 {
		t.Fatalf("re-import is not idempotent: %+v", rep)
	}

	// Browse: the merged view holds the imports and the built-in platform catalog.
	type page struct {
		Items []struct {
			Name        string `json:"name"`
			Scope       string `json:"scope"`
			DisplayName string `json:"display_name"`
			Enabled     bool   `json:"enabled"`
		} `json:"items"`
		NextCursor string `json:"next_cursor"`
	}
	var p page
	call("GET", "/api/v1/templates?category=Development", token, nil, nil, &p, 200)
	if len(p.Items) != 1 || p.Items[0].Name != "code-server" || p.Items[0].Scope != "tenant" {
		t.Fatalf("Development: %+v (the import must shadow the built-in code-server)", p.Items)
	}
	call("GET", "/api/v1/templates?q=firefox&limit=10", token, nil, nil, &p, 200)
	var names []string
	for _, it := range p.Items {
		names = append(names, it.Scope+":"+it.Name)
	}
	if !slices.Contains(names, "tenant:firefox-browser") || !slices.Contains(names, "platform:firefox") {
		t.Fatalf("search firefox: %v", names)
	}

	// Edit: read, change, write back under the ETag; a second write with the old one fails.
	var tpl map[string]any
	h := call("GET", "/api/v1/templates/firefox-browser", token, nil, nil, &tpl, 200)
	etag := h.Get("ETag")
	for _, k := range []string{"name", "scope", "version", "enabled", "created_at", "updated_at"} {
		delete(tpl, k)
	}
	tpl["display_name"] = "Firefox (Hooli)"
	tpl["idle_timeout_seconds"] = 900
	h = call("PUT", "/api/v1/templates/firefox-browser", token, tpl, http.Header{"If-Match": {etag}}, nil, 200)
	if h.Get("ETag") == etag {
		t.Fatal("the ETag did not change")
	}
	call("PUT", "/api/v1/templates/firefox-browser", token, tpl, http.Header{"If-Match": {etag}}, nil, 412)

	// Disable: gone from the default list, still there for an admin who asks.
	call("POST", "/api/v1/templates/firefox-browser/disable", token, nil, http.Header{"If-Match": {h.Get("ETag")}}, nil, 200)
	call("GET", "/api/v1/templates?q=firefox", token, nil, nil, &p, 200)
	for _, it := range p.Items {
		if it.Name == "firefox-browser" {
			t.Fatalf("disabled template listed: %+v", p.Items)
		}
	}
	call("GET", "/api/v1/templates?q=firefox&include_disabled=true", token, nil, nil, &p, 200)
	found := false
	for _, it := range p.Items {
		found = found || (it.Name == "firefox-browser" && !it.Enabled && it.DisplayName == "Firefox (Hooli)")
	}
	if !found {
		t.Fatalf("disabled template missing for the admin: %+v", p.Items)
	}
}
