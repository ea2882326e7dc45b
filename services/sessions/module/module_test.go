package module_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/auth/authtest"
	"streamspace.dev/libs/poll"
	"streamspace.dev/libs/server"
	"streamspace.dev/libs/tenant"
	"streamspace.dev/services/catalog"
	catpostgres "streamspace.dev/services/catalog/postgres"
	"streamspace.dev/services/sessions"
	"streamspace.dev/services/sessions/module"
	"streamspace.dev/tenants/tenantstest"
)

// shutdownTimeout is the test servers' drain deadline. It must exceed net/http's 5 s
// grace for connections that have not sent a request yet (Go's client dials spare ones
// under load): with 5 s, Shutdown could report a cut-short drain for an idle client.
const shutdownTimeout = 15 * time.Second

// harness is the sessions service on a real socket over a real database, with two tenants
// that each have a template "desk".
type harness struct {
	t      testing.TB
	base   string
	signer *authtest.Signer
	env    *tenantstest.Env
	mod    *module.Module
	acme   tenant.ID
	globex tenant.ID
}

func start(t testing.TB) *harness {
	t.Helper()
	return startWith(t, nil)
}

// startWith is start with pool, if not nil, adjusting the server's pool configuration.
func startWith(t testing.TB, pool func(*pgxpool.Config)) *harness {
	t.Helper()
	env := tenantstest.New(t)
	acme, _ := env.Tenant(t, "acme")
	globex, _ := env.Tenant(t, "globex")
	h := &harness{t: t, signer: authtest.NewSigner(t), env: env, acme: acme.ID, globex: globex.ID}
	for _, id := range []tenant.ID{acme.ID, globex.ID} {
		AddTemplate(t, env, id, "desk", catalog.Resources{
			Requests: catalog.ResourceList{CPU: "500m", Memory: "1Gi"},
			Limits:   catalog.ResourceList{CPU: "2", Memory: "4Gi"}}, 0)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		done <- server.Run(ctx, server.Config{Name: "sessions", Listen: "127.0.0.1:0", DatabaseURL: env.URL, LogLevel: "error",
			ShutdownTimeout: shutdownTimeout, MaxConns: 40, Issuer: authtest.Issuer, Audience: auth.DefaultAudience},
			server.Options{Listener: ln, OnStart: func(server.Started) { close(started) }, Pool: pool},
			func(d server.Deps) ([]server.Module, error) {
				d.Verifier = h.signer.Verifier(t)
				m, err := module.New(d, module.Config{Interval: time.Hour})
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
	// Live-stream tests need the change listener, which connects on its own after start.
	for deadline := time.Now().Add(30 * time.Second); !h.mod.Controller().Listening(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the sessions controller is not listening for changes after 30 s")
		}
	}
	return h
}

// AddTemplate stores a tenant template.
func AddTemplate(t testing.TB, env *tenantstest.Env, id tenant.ID, name string, res catalog.Resources, idle int) {
	t.Helper()
	spec := catalog.Spec{DisplayName: "Desktop " + name, Image: "example.org/desk:1", Resources: res,
		Ports: []catalog.Port{{Name: "vnc", Port: 5900, Stream: catalog.StreamRFB}}, IdleTimeoutSeconds: idle,
		Home: &catalog.Home{MountPath: "/home/user", Size: "1Gi"}}
	spec.Normalize()
	if _, err := catpostgres.New(env.DB).Create(tenantstest.Context(id), catalog.ScopeTenant, catalog.TemplateName(name), spec, true); err != nil {
		t.Fatal(err)
	}
}

func (h *harness) with(t *testing.T) *harness {
	c := *h
	c.t = t
	return &c
}

func (h *harness) token(id tenant.ID, user string, role auth.Role) string {
	return h.signer.Token(h.t, id, user, role)
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decoding %s: %v", r.body, err)
	}
}

func (r response) code() string {
	var p struct{ Code string }
	_ = json.Unmarshal(r.body, &p)
	return p.Code
}

func (h *harness) do(method, path, token string, body any, header ...string) response {
	h.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			h.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, h.base+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
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
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

func (h *harness) expect(r response, status int, code string) {
	h.t.Helper()
	if r.status != status || (code != "" && r.code() != code) {
		h.t.Fatalf("got %d %s, want %d %s", r.status, r.body, status, code)
	}
}

func (h *harness) create(token string, body any, header ...string) sessions.Session {
	h.t.Helper()
	r := h.do("POST", "/api/v1/sessions", token, body, header...)
	h.expect(r, 201, "")
	var s sessions.Session
	r.json(h.t, &s)
	return s
}

func TestAPI(t *testing.T) {
	h := start(t)
	alice := h.token(h.acme, "alice", auth.RoleMember)
	bob := h.token(h.acme, "bob", auth.RoleMember)
	admin := h.token(h.acme, "ada", auth.RoleAdmin)
	globexAdmin := h.token(h.globex, "gus", auth.RoleAdmin)

	var mine sessions.Session
	t.Run("create from a template", func(t *testing.T) {
		h := h.with(t)
		r := h.do("POST", "/api/v1/sessions", alice, map[string]any{"template": "desk", "tags": []string{"Work"},
			"resources": map[string]string{"cpu": "1"}})
		h.expect(r, 201, "")
		r.json(t, &mine)
		if r.header.Get("Location") != "/api/v1/sessions/"+string(mine.ID) {
			t.Fatalf("Location %q", r.header.Get("Location"))
		}
		if mine.Owner != "alice" || mine.Phase != sessions.PhasePending || mine.Desired != sessions.DesiredRunning ||
			mine.CPUMillis != 1000 || mine.MemoryBytes != 1<<30 || !slices.Equal(mine.Tags, []string{"work"}) ||
			mine.TemplateScope != "tenant" || mine.Name != "Desktop desk" || mine.IdleTimeoutSeconds != sessions.DefaultIdleTimeoutSeconds {
			t.Fatalf("created %+v", mine)
		}
	})
	t.Run("scoped API tokens act only within their scopes", func(t *testing.T) {
		h := h.with(t)
		readOnly := h.signer.ScopedToken(t, h.acme, "carol", auth.RoleMember, auth.ScopeSessionsRead)
		elsewhere := h.signer.ScopedToken(t, h.acme, "carol", auth.RoleMember, auth.ScopeCatalogRead)
		// Creating reads the template with the caller's rights, so it needs catalog:read too.
		writer := h.signer.ScopedToken(t, h.acme, "carol", auth.RoleMember,
			auth.ScopeSessionsRead, auth.ScopeSessionsWrite, auth.ScopeCatalogRead)
		body := map[string]any{"template": "desk"}
		h.expect(h.do("GET", "/api/v1/sessions", readOnly, nil), 200, "")
		h.expect(h.do("POST", "/api/v1/sessions", readOnly, body), 403, "forbidden")
		h.expect(h.do("GET", "/api/v1/sessions", elsewhere, nil), 403, "forbidden")
		h.expect(h.do("POST", "/api/v1/sessions", writer, body), 201, "")
	})
	t.Run("bad input", func(t *testing.T) {
		h := h.with(t)
		h.expect(h.do("POST", "/api/v1/sessions", alice, map[string]any{"template": "nope"}), 404, "not_found")
		h.expect(h.do("POST", "/api/v1/sessions", alice, map[string]any{"template": "Bad Name"}), 400, "invalid")
		h.expect(h.do("POST", "/api/v1/sessions", alice, map[string]any{"template": "desk", "resources": map[string]string{"cpu": "3"}}), 400, "invalid")
		h.expect(h.do("POST", "/api/v1/sessions", alice, map[string]any{"template": "desk", "idle_timeout_seconds": 999999}), 400, "invalid")
		h.expect(h.do("POST", "/api/v1/sessions", alice, map[string]any{"template": "desk", "surprise": 1}), 400, "invalid")
		h.expect(h.do("POST", "/api/v1/sessions", "", map[string]any{"template": "desk"}), 401, "unauthenticated")
	})
	t.Run("idempotent create", func(t *testing.T) {
		h := h.with(t)
		body := map[string]any{"template": "desk"}
		first := h.do("POST", "/api/v1/sessions", alice, body, "Idempotency-Key", "k-1")
		h.expect(first, 201, "")
		again := h.do("POST", "/api/v1/sessions", alice, body, "Idempotency-Key", "k-1")
		h.expect(again, 201, "")
		var a, b sessions.Session
		first.json(t, &a)
		again.json(t, &b)
		if a.ID != b.ID || again.header.Get("Idempotent-Replayed") != "true" || first.header.Get("Idempotent-Replayed") != "" {
			t.Fatalf("replay gave %s (header %q), first %s", b.ID, again.header.Get("Idempotent-Replayed"), a.ID)
		}
		h.expect(h.do("POST", "/api/v1/sessions", alice, map[string]any{"template": "desk", "name": "other"}, "Idempotency-Key", "k-1"), 409, "conflict")
		// Keys are per caller: bob's k-1 is his own.
		if s := h.create(bob, body, "Idempotency-Key", "k-1"); s.ID == a.ID {
			t.Fatal("bob got alice's session")
		}
		// Concurrent retries of one key create one session.
		var wg sync.WaitGroup
		ids := make([]sessions.ID, 8)
		for i := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := h.do("POST", "/api/v1/sessions", alice, body, "Idempotency-Key", "k-concurrent")
				var s sessions.Session
				if r.status == 201 && json.Unmarshal(r.body, &s) == nil {
					ids[i] = s.ID
				}
			}()
		}
		wg.Wait()
		for _, id := range ids {
			if id == "" || id != ids[0] {
				t.Fatalf("concurrent retries got %v", ids)
			}
		}
	})
	t.Run("visibility: other users and tenants get 404 everywhere", func(t *testing.T) {
		h := h.with(t)
		path := "/api/v1/sessions/" + string(mine.ID)
		for _, who := range []string{bob, globexAdmin} {
			h.expect(h.do("GET", path, who, nil), 404, "not_found")
			h.expect(h.do("GET", path+"/events", who, nil), 404, "not_found")
			h.expect(h.do("POST", path+"/hibernate", who, nil), 404, "not_found")
			h.expect(h.do("POST", path+"/wake", who, nil), 404, "not_found")
			h.expect(h.do("POST", path+"/stop", who, nil), 404, "not_found")
			h.expect(h.do("POST", path+"/heartbeat", who, nil), 404, "not_found")
			h.expect(h.do("PUT", path+"/tags", who, map[string]any{"tags": []string{"x"}}), 404, "not_found")
			h.expect(h.do("DELETE", path, who, nil), 404, "not_found")
		}
		h.expect(h.do("GET", path, admin, nil), 200, "")
		list := func(tok, query string) []sessions.Session {
			r := h.do("GET", "/api/v1/sessions"+query, tok, nil)
			h.expect(r, 200, "")
			var p sessions.Page
			r.json(t, &p)
			return p.Items
		}
		for _, s := range list(bob, "") {
			if s.Owner != "bob" {
				t.Fatalf("bob lists %s of %s", s.ID, s.Owner)
			}
		}
		if n := len(list(globexAdmin, "")); n != 0 {
			t.Fatalf("globex lists %d acme sessions", n)
		}
		all := list(admin, "")
		owners := map[string]bool{}
		for _, s := range all {
			owners[s.Owner] = true
		}
		if !owners["alice"] || !owners["bob"] {
			t.Fatalf("admin sees owners %v", owners)
		}
		if n := len(list(admin, "?mine=true")); n != 0 {
			t.Fatalf("admin's own list has %d", n)
		}
		// Paging walks everything exactly once.
		seen := map[sessions.ID]bool{}
		cursor := ""
		for {
			r := h.do("GET", "/api/v1/sessions?limit=2&cursor="+cursor, admin, nil)
			h.expect(r, 200, "")
			var p sessions.Page
			r.json(t, &p)
			for _, s := range p.Items {
				if seen[s.ID] {
					t.Fatalf("%s twice", s.ID)
				}
				seen[s.ID] = true
			}
			if p.NextCursor == "" {
				break
			}
			cursor = p.NextCursor
		}
		if len(seen) != len(all) {
			t.Fatalf("paged %d of %d", len(seen), len(all))
		}
	})
	t.Run("lifecycle actions and illegal transitions", func(t *testing.T) {
		h := h.with(t)
		s := h.create(alice, map[string]any{"template": "desk"})
		path := "/api/v1/sessions/" + string(s.ID)
		r := h.do("POST", path+"/hibernate", alice, nil)
		h.expect(r, 200, "")
		var got sessions.Session
		r.json(t, &got)
		// Never placed, so nothing has to scale down: it is Hibernated at once.
		if got.Desired != sessions.DesiredHibernated || got.Phase != sessions.PhaseHibernated || got.Generation != 2 {
			t.Fatalf("after hibernate %+v", got)
		}
		h.expect(h.do("POST", path+"/hibernate", alice, nil), 200, "") // already there: no-op
		r = h.do("POST", path+"/wake", alice, nil)
		h.expect(r, 200, "")
		r.json(t, &got)
		if got.Desired != sessions.DesiredRunning || got.Phase != sessions.PhasePending {
			t.Fatalf("after wake %+v", got)
		}
		h.expect(h.do("POST", path+"/stop", alice, nil), 200, "")
		r = h.do("POST", path+"/wake", alice, nil)
		h.expect(r, 409, "conflict")
		if !strings.Contains(r.code()+string(r.body), "stopped") {
			t.Fatalf("409 does not explain: %s", r.body)
		}
		h.expect(h.do("POST", path+"/hibernate", alice, nil), 409, "conflict")
		h.expect(h.do("PUT", path+"/tags", alice, map[string]any{"tags": []string{"a", "b"}}), 200, "")
		r = h.do("GET", path+"/events", alice, nil)
		h.expect(r, 200, "")
		var ev sessions.EventsResponse
		r.json(t, &ev)
		var kinds []string
		for _, e := range ev.Items {
			kinds = append(kinds, e.Kind+"/"+string(e.Desired))
			if e.Actor != "alice" {
				t.Fatalf("event %+v has actor %q", e, e.Actor)
			}
		}
		want := []string{"created/running", "desired/hibernated", "desired/running", "desired/stopped", "tags/stopped"}
		if !slices.Equal(kinds, want) {
			t.Fatalf("events %v, want %v", kinds, want)
		}
		h.expect(h.do("DELETE", path, alice, nil), 204, "")
		h.expect(h.do("GET", path, alice, nil), 404, "not_found")
		h.expect(h.do("DELETE", path, alice, nil), 404, "not_found")
		// Every action is in the audit log with its actor.
		rows, err := h.env.Pool.Query(context.Background(), `SELECT actor, action FROM `+h.acme.Schema()+`.audit_log WHERE target = $1 ORDER BY id`,
			"session:"+string(s.ID))
		if err != nil {
			t.Fatal(err)
		}
		var audit []string
		for rows.Next() {
			var actor, action string
			_ = rows.Scan(&actor, &action)
			audit = append(audit, actor+" "+action)
		}
		wantAudit := []string{"alice session.create", "alice session.hibernate", "alice session.wake", "alice session.stop", "alice session.tags", "alice session.delete"}
		if !slices.Equal(audit, wantAudit) {
			t.Fatalf("audit %v, want %v", audit, wantAudit)
		}
	})
	t.Run("settings are for admins", func(t *testing.T) {
		h := h.with(t)
		h.expect(h.do("GET", "/api/v1/session-settings", alice, nil), 403, "forbidden")
		h.expect(h.do("PUT", "/api/v1/session-quotas/alice", alice, map[string]any{"max_sessions": 1}), 403, "forbidden")
		r := h.do("PUT", "/api/v1/session-settings", admin, map[string]any{"idle_timeout_seconds": 600, "user": map[string]any{"max_sessions": 3}})
		h.expect(r, 200, "")
		var st sessions.Settings
		r.json(t, &st)
		if st.IdleTimeoutSeconds != 600 || st.MaxDurationSeconds != sessions.DefaultMaxDurationSeconds || *st.User.MaxSessions != 3 {
			t.Fatalf("settings %+v", st)
		}
		h.expect(h.do("PUT", "/api/v1/session-settings", admin, map[string]any{"idle_timeout_seconds": 1}), 400, "invalid")
		h.expect(h.do("PUT", "/api/v1/session-quotas/alice", admin, map[string]any{"max_sessions": 100}), 204, "")
	})
	t.Run("OpenAPI documents exactly the served routes", func(t *testing.T) {
		h := h.with(t)
		r := h.do("GET", sessions.OpenAPIPath, "", nil)
		h.expect(r, 200, "")
		var doc struct {
			OpenAPI string                                `json:"openapi"`
			Paths   map[string]map[string]json.RawMessage `json:"paths"`
		}
		r.json(t, &doc)
		var documented []string
		for path, ops := range doc.Paths {
			for method := range ops {
				documented = append(documented, strings.ToUpper(method)+" "+path)
			}
		}
		served := h.mod.Routes()
		slices.Sort(documented)
		slices.Sort(served)
		if doc.OpenAPI != "3.1.0" || !slices.Equal(documented, served) {
			t.Fatalf("documented %v\nserved     %v", documented, served)
		}
	})
}

// TestQuotaRace sends 60 concurrent creates for one user with a quota of 5, and 60 more
// from six users against a tenant quota of 9: no more than the quota ever run.
func TestQuotaRace(t *testing.T) {
	h := start(t)
	admin := h.token(h.acme, "ada", auth.RoleAdmin)
	h.expect(h.do("PUT", "/api/v1/session-settings", admin, map[string]any{
		"tenant": map[string]any{"max_sessions": 14, "max_memory_bytes": 14 << 30},
		"user":   map[string]any{"max_sessions": 5}}), 200, "")
	h.expect(h.do("PUT", "/api/v1/session-quotas/whale", admin, map[string]any{"max_sessions": 100}), 204, "")
	race := func(users []string, n int) (ok, refused int) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tok := h.token(h.acme, users[i%len(users)], auth.RoleMember)
				r := h.do("POST", "/api/v1/sessions", tok, map[string]any{"template": "desk"})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case r.status == 201:
					ok++
				case r.status == 422 && r.code() == "quota_exceeded":
					refused++
				default:
					t.Errorf("unexpected %d %s", r.status, r.body)
				}
			}()
		}
		wg.Wait()
		return ok, refused
	}
	if ok, refused := race([]string{"solo"}, 60); ok != 5 || refused != 55 {
		t.Fatalf("one user: %d created, %d refused; want 5 and 55", ok, refused)
	}
	// The tenant has 14 - 5 = 9 sessions left; whale's own quota is no obstacle.
	if ok, refused := race([]string{"whale", "w2", "w3", "w4", "w5", "w6"}, 60); ok != 9 || refused != 51 {
		t.Fatalf("tenant: %d created, %d refused; want 9 and 51", ok, refused)
	}
	var n, used int64
	if err := h.env.Pool.QueryRow(context.Background(), `SELECT count(*) FROM `+h.acme.Schema()+`.sessions WHERE desired = 'running'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if err := h.env.Pool.QueryRow(context.Background(), `SELECT sessions FROM `+h.acme.Schema()+`.session_usage WHERE subject = ''`).Scan(&used); err != nil {
		t.Fatal(err)
	}
	if n != 14 || used != 14 {
		t.Fatalf("%d running sessions, usage %d; want 14", n, used)
	}
	// Hibernating frees a slot; waking takes it back, and a wake over quota is refused.
	solo := h.token(h.acme, "solo", auth.RoleMember)
	r := h.do("GET", "/api/v1/sessions", solo, nil)
	var p sessions.Page
	r.json(t, &p)
	h.expect(h.do("POST", "/api/v1/sessions/"+string(p.Items[0].ID)+"/hibernate", solo, nil), 200, "")
	h.create(solo, map[string]any{"template": "desk"})
	h.expect(h.do("POST", "/api/v1/sessions/"+string(p.Items[0].ID)+"/wake", solo, nil), 422, "quota_exceeded")
}

// sse reads a server-sent event stream.
type sse struct {
	mu     sync.Mutex
	events []sseEvent
	cancel context.CancelFunc
}

type sseEvent struct {
	Event        string
	ID           sessions.ID
	Owner        string
	Phase        sessions.Phase
	LastActivity time.Time
}

func (h *harness) watch(token, query string) *sse {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", h.base+sessions.WatchPath+query, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		h.t.Fatalf("watch: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	s := &sse{cancel: cancel}
	h.t.Cleanup(cancel)
	go func() {
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		var ev string
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				ev = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				var v struct {
					ID           sessions.ID    `json:"id"`
					Owner        string         `json:"owner_id"`
					Phase        sessions.Phase `json:"phase"`
					LastActivity time.Time      `json:"last_activity"`
				}
				_ = json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &v)
				s.mu.Lock()
				s.events = append(s.events, sseEvent{Event: ev, ID: v.ID, Owner: v.Owner, Phase: v.Phase, LastActivity: v.LastActivity})
				s.mu.Unlock()
			}
		}
	}()
	return s
}

func (s *sse) snapshot() []sseEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.events)
}

// waitFor waits until the stream holds an event matching ok.
func (s *sse) waitFor(t *testing.T, what string, ok func(sseEvent) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range s.snapshot() {
			if ok(e) {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %s in %+v", what, s.snapshot())
}

func TestLiveStreamShowsOnlyWhatTheCallerMaySee(t *testing.T) {
	h := start(t)
	alice := h.token(h.acme, "alice", auth.RoleMember)
	bob := h.token(h.acme, "bob", auth.RoleMember)
	admin := h.token(h.acme, "ada", auth.RoleAdmin)
	gus := h.token(h.globex, "gus", auth.RoleAdmin)
	early := h.create(alice, map[string]any{"template": "desk"})

	aliceStream := h.watch(alice, "")
	bobStream := h.watch(bob, "")
	adminStream := h.watch(admin, "")
	globexStream := h.watch(gus, "")
	aliceStream.waitFor(t, "alice's snapshot", func(e sseEvent) bool { return e.ID == early.ID })

	bobs := h.create(bob, map[string]any{"template": "desk"})
	alices := h.create(alice, map[string]any{"template": "desk"})
	theirs := h.create(gus, map[string]any{"template": "desk"})
	h.expect(h.do("POST", "/api/v1/sessions/"+string(alices.ID)+"/hibernate", alice, nil), 200, "")
	h.expect(h.do("DELETE", "/api/v1/sessions/"+string(bobs.ID), bob, nil), 204, "")

	aliceStream.waitFor(t, "alice's hibernation", func(e sseEvent) bool { return e.ID == alices.ID && e.Phase == sessions.PhaseHibernated })
	bobStream.waitFor(t, "bob's deletion", func(e sseEvent) bool { return e.Event == "deleted" && e.ID == bobs.ID })
	adminStream.waitFor(t, "bob's session for the admin", func(e sseEvent) bool { return e.ID == bobs.ID })
	adminStream.waitFor(t, "alice's session for the admin", func(e sseEvent) bool { return e.ID == alices.ID })
	globexStream.waitFor(t, "globex's own session", func(e sseEvent) bool { return e.ID == theirs.ID })
	// A last change of alice's, so that anything queued before it has surely arrived.
	h.expect(h.do("POST", "/api/v1/sessions/"+string(alices.ID)+"/stop", alice, nil), 200, "")
	aliceStream.waitFor(t, "alice's stop", func(e sseEvent) bool { return e.ID == alices.ID && e.Phase == sessions.PhaseStopped })
	bobStream.waitFor(t, "bob's own creation", func(e sseEvent) bool { return e.ID == bobs.ID })
	time.Sleep(100 * time.Millisecond)

	check := func(name string, s *sse, allowed func(sseEvent) bool) {
		for _, e := range s.snapshot() {
			if !allowed(e) {
				t.Errorf("%s's stream carried %+v", name, e)
			}
		}
	}
	check("alice", aliceStream, func(e sseEvent) bool { return e.ID == early.ID || e.ID == alices.ID })
	check("bob", bobStream, func(e sseEvent) bool { return e.ID == bobs.ID })
	check("the acme admin", adminStream, func(e sseEvent) bool { return e.ID != theirs.ID })
	check("globex", globexStream, func(e sseEvent) bool { return e.ID == theirs.ID })
	// A stream needs a token.
	h.expect(h.do("GET", sessions.WatchPath, "", nil), 401, "unauthenticated")
}

// The live stream catches up on what changed while this process's LISTEN connection was
// down: PostgreSQL does not queue a NOTIFY for a listener that is not connected, so once
// the listener is back every stream reads its sessions again (Hub.Resync) and shows the
// changes it was never told about, deletions included.
func TestLiveStreamCatchesUpAfterListenerLoss(t *testing.T) {
	h := start(t)
	alice := h.token(h.acme, "alice", auth.RoleMember)
	kept := h.create(alice, map[string]any{"template": "desk"})
	gone := h.create(alice, map[string]any{"template": "desk"})
	stream := h.watch(alice, "")
	stream.waitFor(t, "the snapshot", func(e sseEvent) bool { return e.ID == gone.ID })

	bg := context.Background()
	if _, err := h.env.Pool.Exec(bg, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND query LIKE 'LISTEN %' AND pid <> pg_backend_pid()`); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, time.Minute, "the controller notices its listener is gone", func() bool { return !h.mod.Controller().Listening() })
	// Changes that send no notice, as if sent while nobody listened.
	schema := pgx.Identifier{h.acme.Schema()}.Sanitize()
	for _, q := range []struct {
		sql string
		id  sessions.ID
	}{
		{`UPDATE ` + schema + `.sessions SET phase = 'Failed', reason = 'Missed' WHERE id = $1`, kept.ID},
		{`UPDATE ` + schema + `.sessions SET deleted_at = now() WHERE id = $1`, gone.ID},
	} {
		if tag, err := h.env.Pool.Exec(bg, q.sql, string(q.id)); err != nil || tag.RowsAffected() != 1 {
			t.Fatalf("%s: %v (%d rows)", q.sql, err, tag.RowsAffected())
		}
	}
	stream.waitFor(t, "the missed failure", func(e sseEvent) bool { return e.ID == kept.ID && e.Phase == sessions.PhaseFailed })
	stream.waitFor(t, "the missed deletion", func(e sseEvent) bool { return e.Event == "deleted" && e.ID == gone.ID })
}

// A session that streams is active in what the API shows: once the gateway records its
// traffic (in session_traffic), last_activity moves in a read, in the list, in the answer
// of a write and in the live stream's next event of the session.
func TestAPIShowsTrafficAsActivity(t *testing.T) {
	h := start(t)
	alice := h.token(h.acme, "alice", auth.RoleMember)
	s := h.create(alice, map[string]any{"template": "desk"})
	stream := h.watch(alice, "")
	stream.waitFor(t, "the snapshot", func(e sseEvent) bool { return e.ID == s.ID })

	streamed := s.LastActivity.Add(time.Hour).Truncate(time.Microsecond)
	if _, err := h.env.Pool.Exec(context.Background(), `INSERT INTO `+pgx.Identifier{h.acme.Schema()}.Sanitize()+`.session_traffic
		(session_id, last_traffic_at, bytes_in, bytes_out) VALUES ($1, $2, 100, 5000)`, string(s.ID), streamed); err != nil {
		t.Fatal(err)
	}
	var got sessions.Session
	h.do("GET", "/api/v1/sessions/"+string(s.ID), alice, nil).json(t, &got)
	if !got.LastActivity.Equal(streamed) {
		t.Fatalf("GET shows last_activity %v, want the traffic's %v", got.LastActivity, streamed)
	}
	var page sessions.Page
	h.do("GET", "/api/v1/sessions", alice, nil).json(t, &page)
	if len(page.Items) != 1 || !page.Items[0].LastActivity.Equal(streamed) {
		t.Fatalf("the list shows %+v, want last_activity %v", page.Items, streamed)
	}
	r := h.do("PUT", "/api/v1/sessions/"+string(s.ID)+"/tags", alice, map[string]any{"tags": []string{"streaming"}})
	h.expect(r, 200, "")
	r.json(t, &got)
	if !got.LastActivity.Equal(streamed) {
		t.Fatalf("the tags' answer shows last_activity %v, want %v", got.LastActivity, streamed)
	}
	stream.waitFor(t, "the event of the tags' change with the traffic's activity", func(e sseEvent) bool {
		return e.ID == s.ID && e.LastActivity.Equal(streamed)
	})
}
