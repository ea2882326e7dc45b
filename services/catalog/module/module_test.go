package module_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/auth/authtest"
	"streamspace.dev/libs/server"
	"streamspace.dev/libs/tenant"
	"streamspace.dev/services/catalog"
	"streamspace.dev/services/catalog/module"
	"streamspace.dev/tenants/tenantstest"
)

// shutdownTimeout is the test servers' drain deadline. It must exceed net/http's 5 s
// grace for connections that have not sent a request yet (Go's client dials spare ones
// under load): with 5 s, Shutdown could report a cut-short drain for an idle client.
const shutdownTimeout = 15 * time.Second

// harness is a catalog server on a real socket over a real database, with two tenants.
type harness struct {
	t      *testing.T
	base   string
	signer *authtest.Signer
	env    *tenantstest.Env
	mod    *module.Module
	acme   string // tenant ids
	globex string
}

func start(t *testing.T) *harness {
	t.Helper()
	env := tenantstest.New(t)
	acme, _ := env.Tenant(t, "acme")
	globex, _ := env.Tenant(t, "globex")
	h := &harness{t: t, signer: authtest.NewSigner(t), env: env, acme: string(acme.ID), globex: string(globex.ID)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		done <- server.Run(ctx, server.Config{Name: "catalog", Listen: "127.0.0.1:0", DatabaseURL: env.URL, LogLevel: "error",
			ShutdownTimeout: shutdownTimeout, MaxConns: 4, Issuer: authtest.Issuer, Audience: auth.DefaultAudience},
			server.Options{Listener: ln, OnStart: func(server.Started) { close(started) }},
			func(d server.Deps) ([]server.Module, error) {
				d.Verifier = h.signer.Verifier(t)
				m, err := module.New(d)
				h.mod = m
				return []server.Module{m}, err
			})
	}()
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("server did not start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("server did not start")
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	h.base = "http://" + ln.Addr().String()
	return h
}

// with returns h reporting to t, for subtests.
func (h *harness) with(t *testing.T) *harness {
	c := *h
	c.t = t
	return &c
}

func (h *harness) token(tenantID string, role auth.Role) string {
	return h.signer.Token(h.t, tenant.ID(tenantID), "user-"+string(role), role)
}

// response is what a call returned.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decoding %s: %v", r.body, err)
	}
}

// code returns the problem code of an error response.
func (r response) code() string {
	var p struct{ Code string }
	_ = json.Unmarshal(r.body, &p)
	return p.Code
}

func (h *harness) do(method, path, token string, body any, header ...string) response {
	h.t.Helper()
	var rd io.Reader
	ctype := "application/json"
	switch b := body.(type) {
	case nil:
	case []byte:
		rd, ctype = bytes.NewReader(b), "application/yaml"
	default:
		j, err := json.Marshal(b)
		if err != nil {
			h.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, h.base+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", ctype)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

func (h *harness) expect(r response, status int, code string) {
	h.t.Helper()
	if r.status != status || (code != "" && r.code() != code) {
		h.t.Fatalf("got %d %s, want %d %s", r.status, r.body, status, code)
	}
}

func firefox(name string) map[string]any {
	return map[string]any{
		"name": name, "display_name": "Firefox " + name, "category": "Web Browsers", "tags": []string{"browser"},
		"image": "lscr.io/linuxserver/firefox:latest",
		"resources": map[string]any{"requests": map[string]string{"cpu": "500m", "memory": "512Mi"},
			"limits": map[string]string{"cpu": "2", "memory": "2Gi"}},
		"ports": []map[string]any{{"name": "vnc", "port": 3000, "stream": "vnc-web"}},
	}
}

func listNames(t *testing.T, r response) []string {
	t.Helper()
	var p catalog.Page
	r.json(t, &p)
	var out []string
	for _, it := range p.Items {
		out = append(out, string(it.Scope)+":"+string(it.Name))
	}
	return out
}

func TestAPI(t *testing.T) {
	h := start(t)
	admin, member := h.token(h.acme, auth.RoleAdmin), h.token(h.acme, auth.RoleMember)
	other := h.token(h.globex, auth.RoleOwner)
	operator := h.signer.OperatorToken(t, "op-1")

	t.Run("authentication is required", func(t *testing.T) {
		h := h.with(t)
		h.expect(h.do("GET", "/api/v1/templates", "", nil), 401, "unauthenticated")
	})
	t.Run("members see the seeded platform catalog", func(t *testing.T) {
		h := h.with(t)
		r := h.do("GET", "/api/v1/templates?limit=500", member, nil)
		h.expect(r, 200, "")
		got := listNames(t, r)
		for _, want := range []string{"platform:firefox", "platform:chromium", "platform:code-server", "platform:gimp",
			"platform:libreoffice", "platform:inkscape", "platform:xfce-desktop"} {
			if !slices.Contains(got, want) {
				t.Errorf("seed %s missing from %v", want, got)
			}
		}
	})
	t.Run("members cannot write", func(t *testing.T) {
		h := h.with(t)
		h.expect(h.do("POST", "/api/v1/templates", member, firefox("mine")), 403, "forbidden")
		h.expect(h.do("POST", "/api/v1/templates:import", member, []byte("kind: Template")), 403, "forbidden")
	})

	t.Run("scoped API tokens act only within their scopes", func(t *testing.T) {
		h := h.with(t)
		id := tenant.ID(h.acme)
		readOnly := h.signer.ScopedToken(t, id, "owner-pat", auth.RoleOwner, auth.ScopeCatalogRead)
		elsewhere := h.signer.ScopedToken(t, id, "owner-pat", auth.RoleOwner, auth.ScopeIdentityRead)
		writer := h.signer.ScopedToken(t, id, "owner-pat", auth.RoleOwner, auth.ScopeCatalogWrite, auth.ScopeCatalogRead)
		h.expect(h.do("GET", "/api/v1/templates", readOnly, nil), 200, "")
		h.expect(h.do("POST", "/api/v1/templates", readOnly, firefox("scoped")), 403, "forbidden")
		h.expect(h.do("GET", "/api/v1/templates", elsewhere, nil), 403, "forbidden")
		h.expect(h.do("POST", "/api/v1/templates", writer, firefox("scoped")), 201, "")
		h.expect(h.do("DELETE", "/api/v1/templates/scoped", writer, nil), 204, "")
	})

	var etag string
	t.Run("admins create, and shadow a platform template", func(t *testing.T) {
		h := h.with(t)
		r := h.do("POST", "/api/v1/templates", admin, firefox("acme-browser"))
		h.expect(r, 201, "")
		if etag = r.header.Get("ETag"); etag != `"tenant-1"` || r.header.Get("Location") != "/api/v1/templates/acme-browser" {
			t.Fatalf("headers %v", r.header)
		}
		h.expect(h.do("POST", "/api/v1/templates", admin, firefox("acme-browser")), 409, "conflict")
		h.expect(h.do("POST", "/api/v1/templates", admin, firefox("firefox")), 201, "")
		got := listNames(t, h.do("GET", "/api/v1/templates?tag=browser&limit=500", member, nil))
		if slices.Contains(got, "platform:firefox") || !slices.Contains(got, "tenant:firefox") {
			t.Fatalf("shadowing: %v", got)
		}
		got = listNames(t, h.do("GET", "/api/v1/templates?limit=500", other, nil))
		if !slices.Contains(got, "platform:firefox") || slices.Contains(got, "tenant:acme-browser") {
			t.Fatalf("globex's view: %v", got)
		}
	})
	t.Run("another tenant's template is 404", func(t *testing.T) {
		h := h.with(t)
		h.expect(h.do("GET", "/api/v1/templates/acme-browser", other, nil), 404, "not_found")
		body := firefox("x")
		delete(body, "name")
		h.expect(h.do("PUT", "/api/v1/templates/acme-browser", other, body, "If-Match", etag), 404, "not_found")
		h.expect(h.do("DELETE", "/api/v1/templates/acme-browser", other, nil), 404, "not_found")
		h.expect(h.do("POST", "/api/v1/templates/acme-browser/disable", other, nil), 404, "not_found")
	})
	t.Run("bad input is refused and nothing is stored", func(t *testing.T) {
		h := h.with(t)
		cases := map[string]struct {
			edit  func(map[string]any)
			field string
		}{
			"port out of range": {func(m map[string]any) { m["ports"] = []map[string]any{{"name": "vnc", "port": 70000, "stream": "rfb"}} }, "ports/0/port"},
			"two streaming ports": {func(m map[string]any) {
				m["ports"] = []map[string]any{{"name": "a", "port": 1, "stream": "rfb"}, {"name": "b", "port": 2, "stream": "http"}}
			}, "ports/1/stream"},
			"bad quantity": {func(m map[string]any) {
				m["resources"] = map[string]any{"limits": map[string]string{"memory": "512m"}}
			}, "resources/limits/memory"},
			"bad name":      {func(m map[string]any) { m["name"] = "Bad_Name" }, "name"},
			"no image":      {func(m map[string]any) { delete(m, "image") }, "image"},
			"bad agent tag": {func(m map[string]any) { m["agent_tags"] = []string{"gpu"} }, "agent_tags/0"},
		}
		for name, c := range cases {
			body := firefox("bad-input")
			c.edit(body)
			r := h.do("POST", "/api/v1/templates", admin, body)
			h.expect(r, 400, "invalid")
			var p struct{ Errors []struct{ Field string } }
			r.json(t, &p)
			if !slices.ContainsFunc(p.Errors, func(e struct{ Field string }) bool { return e.Field == c.field }) {
				t.Errorf("%s: errors %s lack %s", name, r.body, c.field)
			}
		}
		h.expect(h.do("GET", "/api/v1/templates/bad-input", admin, nil), 404, "not_found")
		body := firefox("unknown-field")
		body["colour"] = "blue"
		h.expect(h.do("POST", "/api/v1/templates", admin, body), 400, "invalid")
		h.expect(h.do("GET", "/api/v1/templates?limit=0", admin, nil), 400, "invalid")
		h.expect(h.do("GET", "/api/v1/templates?cursor=garbage", admin, nil), 400, "invalid")
	})
	t.Run("optimistic concurrency", func(t *testing.T) {
		h := h.with(t)
		body := firefox("acme-browser")
		delete(body, "name")
		body["display_name"] = "Acme Browser v2"
		r := h.do("PUT", "/api/v1/templates/acme-browser", admin, body, "If-Match", etag)
		h.expect(r, 200, "")
		if r.header.Get("ETag") != `"tenant-2"` {
			t.Fatalf("etag %q", r.header.Get("ETag"))
		}
		h.expect(h.do("PUT", "/api/v1/templates/acme-browser", admin, body, "If-Match", etag), 412, "precondition_failed")
		h.expect(h.do("PUT", "/api/v1/templates/acme-browser", admin, body, "If-Match", `"platform-2"`), 412, "precondition_failed")
		body["version"] = 1
		h.expect(h.do("PUT", "/api/v1/templates/acme-browser", admin, body), 409, "conflict")
		body["version"] = 2
		r = h.do("PUT", "/api/v1/templates/acme-browser", admin, body)
		h.expect(r, 200, "")
		var got catalog.Template
		r.json(t, &got)
		if got.Version != 3 || got.DisplayName != "Acme Browser v2" {
			t.Fatalf("after update: %+v", got)
		}
		delete(body, "version")
		h.expect(h.do("PUT", "/api/v1/templates/acme-browser", admin, body), 400, "invalid")
		h.expect(h.do("PUT", "/api/v1/templates/acme-browser", member, body, "If-Match", `"tenant-3"`), 403, "forbidden")
		// The platform template seen through the merged view is not the tenant's to update.
		h.expect(h.do("PUT", "/api/v1/templates/gimp", admin, body, "If-Match", `"tenant-1"`), 404, "not_found")
	})
	t.Run("disable hides from members", func(t *testing.T) {
		h := h.with(t)
		h.expect(h.do("POST", "/api/v1/templates/acme-browser/disable", admin, nil, "If-Match", `"tenant-2"`), 412, "precondition_failed")
		r := h.do("POST", "/api/v1/templates/acme-browser/disable", admin, nil, "If-Match", `"tenant-3"`)
		h.expect(r, 200, "")
		h.expect(h.do("GET", "/api/v1/templates/acme-browser", member, nil), 404, "not_found")
		if got := listNames(t, h.do("GET", "/api/v1/templates?limit=500&include_disabled=true", member, nil)); slices.Contains(got, "tenant:acme-browser") {
			t.Fatalf("member sees disabled: %v", got)
		}
		if got := listNames(t, h.do("GET", "/api/v1/templates?limit=500&include_disabled=true", admin, nil)); !slices.Contains(got, "tenant:acme-browser") {
			t.Fatalf("admin misses disabled: %v", got)
		}
		h.expect(h.do("POST", "/api/v1/templates/acme-browser/enable", admin, nil), 200, "")
		h.expect(h.do("GET", "/api/v1/templates/acme-browser", member, nil), 200, "")
	})
	t.Run("delete", func(t *testing.T) {
		h := h.with(t)
		h.expect(h.do("DELETE", "/api/v1/templates/acme-browser", admin, nil, "If-Match", `"tenant-1"`), 412, "precondition_failed")
		h.expect(h.do("DELETE", "/api/v1/templates/acme-browser", admin, nil, "If-Match", `"tenant-5"`), 204, "")
		h.expect(h.do("GET", "/api/v1/templates/acme-browser", admin, nil), 404, "not_found")
	})
	t.Run("pagination with an opaque cursor", func(t *testing.T) {
		h := h.with(t)
		var all []string
		cursor := ""
		for range 20 {
			r := h.do("GET", "/api/v1/templates?limit=3&cursor="+cursor, member, nil)
			h.expect(r, 200, "")
			var p catalog.Page
			r.json(t, &p)
			for _, it := range p.Items {
				all = append(all, string(it.Name))
			}
			if cursor = p.NextCursor; cursor == "" {
				break
			}
		}
		whole := listNames(t, h.do("GET", "/api/v1/templates?limit=500", member, nil))
		if len(all) != len(whole) || !slices.IsSorted(all) {
			t.Fatalf("paged %v, whole %v", all, whole)
		}
	})
	t.Run("import", func(t *testing.T) {
		h := h.with(t)
		data, err := os.ReadFile("../manifest/testdata/forms.yaml")
		if err != nil {
			t.Fatal(err)
		}
		r := h.do("POST", "/api/v1/templates:import", admin, data)
		h.expect(r, 200, "")
		var rep catalog.ImportReport
		r.json(t, &rep)
		if rep.Created != 3 || rep.Rejected != 0 {
			t.Fatalf("first import: %s", r.body)
		}
		r = h.do("POST", "/api/v1/templates:import", admin, data)
		r.json(t, &rep)
		if rep.Unchanged != 3 {
			t.Fatalf("second import: %s", r.body)
		}
		bad, err := os.ReadFile("../manifest/testdata/rejects.yaml")
		if err != nil {
			t.Fatal(err)
		}
		r = h.do("POST", "/api/v1/templates:import", admin, bad)
		r.json(t, &rep)
		if rep.Rejected != 8 || rep.Created != 1 {
			t.Fatalf("rejects: %s", r.body)
		}
		h.expect(h.do("GET", "/api/v1/templates/bad-port", admin, nil), 404, "not_found")
		h.expect(h.do("POST", "/api/v1/templates:import", admin, bytes.Repeat([]byte("#"), 1<<20+1)), 400, "invalid")
		req := h.do("POST", "/api/v1/templates:import", admin, map[string]string{"kind": "Template"})
		h.expect(req, 400, "invalid")
		// Imported into acme only.
		h.expect(h.do("GET", "/api/v1/templates/xfce-desktop", other, nil), 200, "") // the platform seed
		var tpl catalog.Template
		h.do("GET", "/api/v1/templates/xfce-desktop", admin, nil).json(t, &tpl)
		if tpl.Scope != catalog.ScopeTenant {
			t.Fatalf("acme's import does not shadow: %+v", tpl)
		}
		h.expect(h.do("GET", "/api/v1/templates/novnc-app", other, nil), 404, "not_found")
	})
	t.Run("platform routes are for operators only", func(t *testing.T) {
		h := h.with(t)
		h.expect(h.do("GET", "/api/v1/platform/templates", admin, nil), 404, "not_found")
		h.expect(h.do("POST", "/api/v1/platform/templates", h.token(h.acme, auth.RoleOwner), firefox("evil")), 404, "not_found")
		r := h.do("POST", "/api/v1/platform/templates", operator, firefox("platform-new"))
		h.expect(r, 201, "")
		if r.header.Get("ETag") != `"platform-1"` || r.header.Get("Location") != "/api/v1/platform/templates/platform-new" {
			t.Fatalf("headers %v", r.header)
		}
		h.expect(h.do("GET", "/api/v1/templates/platform-new", other, nil), 200, "")
		h.expect(h.do("GET", "/api/v1/templates/platform-new", member, nil), 200, "")
		// Operators have no tenant: the tenant routes are not theirs.
		h.expect(h.do("GET", "/api/v1/templates", operator, nil), 403, "forbidden")
		h.expect(h.do("POST", "/api/v1/platform/templates/platform-new/disable", operator, nil, "If-Match", `"platform-1"`), 200, "")
		h.expect(h.do("GET", "/api/v1/templates/platform-new", h.token(h.globex, auth.RoleMember), nil), 404, "not_found")
		h.expect(h.do("DELETE", "/api/v1/platform/templates/platform-new", operator, nil), 204, "")
	})
	t.Run("OpenAPI documents exactly the served routes", func(t *testing.T) {
		h := h.with(t)
		r := h.do("GET", catalog.OpenAPIPath, "", nil)
		h.expect(r, 200, "")
		var doc struct {
			OpenAPI string                                `json:"openapi"`
			Paths   map[string]map[string]json.RawMessage `json:"paths"`
		}
		r.json(t, &doc)
		if doc.OpenAPI != "3.1.0" {
			t.Fatalf("openapi %q", doc.OpenAPI)
		}
		var documented []string
		for path, ops := range doc.Paths {
			for method := range ops {
				if method == "parameters" {
					continue
				}
				documented = append(documented, strings.ToUpper(method)+" "+path)
			}
		}
		served := h.mod.Routes()
		slices.Sort(documented)
		slices.Sort(served)
		if !slices.Equal(documented, served) {
			t.Fatalf("documented %v\nserved     %v", documented, served)
		}
		// And each is really on the mux: the fallback route names itself "no route".
		for _, route := range served {
			method, path, _ := strings.Cut(route, " ")
			r := h.do(method, strings.ReplaceAll(path, "{name}", "zz-missing"), operator, nil)
			if strings.Contains(string(r.body), "no route for") {
				t.Errorf("%s is documented but not served", route)
			}
		}
	})
}
