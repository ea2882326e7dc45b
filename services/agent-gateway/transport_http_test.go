package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/auth/authtest"
	"streamspace.dev/libs/server"
	gateway "streamspace.dev/services/agent-gateway"
	"streamspace.dev/services/agent-gateway/postgres"
)

// adminAPI serves a gateway module's admin API over h's database, with tokens from signer.
type adminAPI struct {
	t      *testing.T
	srv    *httptest.Server
	signer *authtest.Signer
}

func newAdminAPI(t *testing.T, h *harness) *adminAPI {
	t.Helper()
	signer := authtest.NewSigner(t)
	deps := server.Deps{DB: h.env.DB, Logger: testLogger(), Registry: prometheus.NewRegistry(), Verifier: signer.Verifier(t)}
	m, err := gateway.New(deps, fastConfig(), postgres.New(h.env.DB, postgres.Thresholds{}), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	mux := http.NewServeMux()
	m.Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &adminAPI{t: t, srv: srv, signer: signer}
}

// do sends a request with token (none if empty) and a JSON body (none if empty).
func (a *adminAPI) do(token, method, path, body string) (int, []byte) {
	return a.doType(token, method, path, body, "application/json")
}

// doType is do with the body's Content-Type.
func (a *adminAPI) doType(token, method, path, body, contentType string) (int, []byte) {
	a.t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, a.srv.URL+path, r)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := a.srv.Client().Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 400 && resp.Header.Get("Content-Type") != "application/problem+json" {
		a.t.Errorf("%s %s: %d with Content-Type %q, want application/problem+json", method, path, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return resp.StatusCode, b
}

func TestAdminAPI(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1)
	api := newAdminAPI(t, h)
	signer, do := api.signer, api.do

	tidA, ctxA := h.tenant("alpha")
	tidB, ctxB := h.tenant("bravo")
	e := h.enroll(h.gw(), h.token(ctxA, "edge", "zone=a"))
	other := h.enroll(h.gw(), h.token(ctxB, "theirs"))
	admin := signer.Token(t, tidA, adminSubject, auth.RoleAdmin)
	member := signer.Token(t, tidA, adminSubject, auth.RoleMember)
	adminB := signer.Token(t, tidB, adminSubject, auth.RoleAdmin)

	agentPath := "/api/v1/agents/" + string(e.resp.AgentID)

	var list gateway.ListResponse[gateway.Agent]
	status, body := do(admin, "GET", "/api/v1/agents", "")
	if status != 200 || json.Unmarshal(body, &list) != nil || len(list.Items) != 1 || list.Items[0].ID != e.resp.AgentID {
		t.Fatalf("list: %d %s", status, body)
	}
	if status, body := do(admin, "PATCH", agentPath, `{"name":"renamed","tags":["zone=b","GPU"]}`); status != 200 ||
		!bytes.Contains(body, []byte(`"name":"renamed"`)) || !bytes.Contains(body, []byte(`"tags":["zone=b","gpu"]`)) {
		t.Fatalf("rename/retag: %d %s", status, body)
	}
	if status, body := do(admin, "POST", agentPath+"/drain", ""); status != 200 || !bytes.Contains(body, []byte(`"draining":true`)) {
		t.Fatalf("drain: %d %s", status, body)
	}
	if status, body := do(admin, "PUT", "/api/v1/assignments/ses-9", `{"agent_id":"`+string(e.resp.AgentID)+`","desired":"running","spec":{"image":"x"}}`); status != 200 ||
		!bytes.Contains(body, []byte(`"generation":1`)) {
		t.Fatalf("assign: %d %s", status, body)
	}
	if status, body := do(admin, "GET", agentPath+"/assignments", ""); status != 200 || !bytes.Contains(body, []byte(`"ses-9"`)) {
		t.Fatalf("assignments: %d %s", status, body)
	}
	if status, _ := do(admin, "GET", "/api/v1/session-status/ses-9", ""); status != 404 {
		t.Fatalf("status before any report: %d", status)
	}

	// Refusals: no token, a member, another tenant's admin, another tenant's agent.
	for _, c := range []struct {
		token, method, path string
		want                int
	}{
		{"", "GET", "/api/v1/agents", 401},
		{member, "GET", "/api/v1/agents", 403},
		{member, "DELETE", agentPath, 403},
		{adminB, "GET", agentPath, 404},
		{adminB, "DELETE", agentPath, 404},
		{admin, "GET", "/api/v1/agents/" + string(other.resp.AgentID), 404},
		{admin, "GET", "/api/v1/agents/not-an-id", 404},
		{adminB, "GET", "/api/v1/assignments/ses-9", 404},
	} {
		if status, body := do(c.token, c.method, c.path, ""); status != c.want {
			t.Errorf("%s %s: %d %s, want %d", c.method, c.path, status, body, c.want)
		}
	}
	if status, body := do(admin, "PATCH", agentPath, `{"name":""}`); status != 400 {
		t.Fatalf("empty name: %d %s", status, body)
	}
	if status, body := do(admin, "DELETE", agentPath, ""); status != 204 {
		t.Fatalf("delete: %d %s", status, body)
	}
	if status, _ := do(admin, "GET", agentPath, ""); status != 404 {
		t.Fatalf("get after delete: %d", status)
	}
}
