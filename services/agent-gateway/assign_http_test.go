package gateway_test

import (
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/wire"
	gateway "streamspace.dev/services/agent-gateway"
)

// TestAssignmentAPI drives the assignment routes of the admin API over HTTP: PUT (with
// and without move), the batch POST and DELETE, their happy paths, the typed 400s of
// malformed bodies and ids, the 404 of an unknown agent, which another tenant's agent and
// session meet identically, the 409 of a move not asked for, and the 401 and 403 of the
// rest of the admin API.
func TestAssignmentAPI(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1)
	api := newAdminAPI(t, h)
	tidA, ctxA := h.tenant("alpha")
	tidB, ctxB := h.tenant("bravo")
	a1 := h.enroll(h.gw(), h.token(ctxA, "one")).resp.AgentID
	a2 := h.enroll(h.gw(), h.token(ctxA, "two")).resp.AgentID
	theirs := h.enroll(h.gw(), h.token(ctxB, "theirs")).resp.AgentID
	unknown := gateway.NewAgentID()
	admin := api.signer.Token(t, tidA, adminSubject, auth.RoleAdmin)
	adminB := api.signer.Token(t, tidB, adminSubject, auth.RoleAdmin)

	// problem decodes a problem+json body; status must be want and the code code.
	problem := func(what string, status int, body []byte, want int, code apperr.Code) apperr.Problem {
		t.Helper()
		var p apperr.Problem
		if err := json.Unmarshal(body, &p); err != nil || status != want || p.Code != code || p.Status != want {
			t.Fatalf("%s: %d %s, want %d %s", what, status, body, want, code)
		}
		return p
	}
	// assignment decodes the assignment of a 200 answer to the request named what.
	assignment := func(what string) func(int, []byte) gateway.Assignment {
		return func(status int, body []byte) gateway.Assignment {
			t.Helper()
			var a gateway.Assignment
			if err := json.Unmarshal(body, &a); err != nil || status != http.StatusOK {
				t.Fatalf("%s: %d %s", what, status, body)
			}
			return a
		}
	}
	put := func(token, session string, agent gateway.AgentID, extra string) (int, []byte) {
		t.Helper()
		return api.do(token, "PUT", "/api/v1/assignments/"+session,
			`{"agent_id":"`+string(agent)+`","desired":"running","spec":{"image":"desk:1"}`+extra+`}`)
	}

	t.Run("put", func(t *testing.T) {
		first := assignment("assign")(put(admin, "ses-1", a1, ""))
		if first.SessionID != "ses-1" || first.AgentID != a1 || first.Generation != 1 || first.Desired != wire.DesiredRunning ||
			string(first.Spec) != `{"image": "desk:1"}` && string(first.Spec) != `{"image":"desk:1"}` {
			t.Fatalf("assigned %+v", first)
		}
		if again := assignment("the same again")(put(admin, "ses-1", a1, "")); again.Generation != 1 {
			t.Fatalf("an identical write bumped the generation: %+v", again)
		}
		if next := assignment("hibernate")(api.do(admin, "PUT", "/api/v1/assignments/ses-1",
			`{"agent_id":"`+string(a1)+`","desired":"hibernated","spec":{"image":"desk:1"}}`)); next.Generation != 2 || next.Desired != wire.DesiredHibernated {
			t.Fatalf("hibernated %+v", next)
		}
		status, body := put(admin, "ses-1", a2, "")
		problem("another agent without move", status, body, http.StatusConflict, apperr.Conflict)
		moved := assignment("move")(put(admin, "ses-1", a2, `,"move":true`))
		if moved.AgentID != a2 || moved.Generation != 3 {
			t.Fatalf("moved %+v", moved)
		}
		// The agent it left is told to delete it, above what it was given.
		status, body = api.do(admin, "GET", "/api/v1/agents/"+string(a1)+"/assignments", "")
		var left gateway.ListResponse[gateway.Assignment]
		if err := json.Unmarshal(body, &left); err != nil || status != 200 || len(left.Items) != 1 ||
			left.Items[0].SessionID != "ses-1" || left.Items[0].Desired != wire.DesiredDeleted || left.Items[0].Generation != 3 {
			t.Fatalf("the agent it left has %d %s", status, body)
		}
		if got := assignment("get")(api.do(admin, "GET", "/api/v1/assignments/ses-1", "")); got.AgentID != a2 || got.Generation != 3 {
			t.Fatalf("read back %+v", got)
		}
	})

	t.Run("batch", func(t *testing.T) {
		body, _ := json.Marshal(gateway.AssignManyBody{Items: []gateway.AssignmentInput{
			{SessionID: "ses-2", AgentID: a1, Desired: wire.DesiredRunning, Spec: json.RawMessage(`{"image":"desk:2"}`)},
			{SessionID: "ses-3", AgentID: unknown, Desired: wire.DesiredRunning},
			{SessionID: "ses-4", AgentID: theirs, Desired: wire.DesiredRunning},
			{SessionID: "ses-5", AgentID: a1, Desired: wire.DesiredStopped},
		}})
		status, out := api.do(admin, "POST", "/api/v1/assignments", string(body))
		var res gateway.ListResponse[gateway.AssignItem]
		if err := json.Unmarshal(out, &res); err != nil || status != 200 || len(res.Items) != 4 {
			t.Fatalf("batch: %d %s", status, out)
		}
		for _, i := range []int{0, 3} {
			if a := res.Items[i].Assignment; a == nil || res.Items[i].Error != nil || a.AgentID != a1 || a.Generation != 1 {
				t.Fatalf("batch item %d: %s", i, out)
			}
		}
		missing, foreign := res.Items[1].Error, res.Items[2].Error
		if missing == nil || foreign == nil || missing.Code != apperr.NotFound || !reflect.DeepEqual(missing, foreign) ||
			res.Items[1].Assignment != nil || res.Items[2].Assignment != nil {
			t.Fatalf("an unknown agent and another tenant's must both be the same not_found: %s", out)
		}
		// Moves in a batch, and a conflict that fails only its own item.
		body, _ = json.Marshal(gateway.AssignManyBody{Items: []gateway.AssignmentInput{
			{SessionID: "ses-2", AgentID: a2, Desired: wire.DesiredRunning, Spec: json.RawMessage(`{"image":"desk:2"}`), Move: true},
			{SessionID: "ses-5", AgentID: a2, Desired: wire.DesiredStopped},
		}})
		status, out = api.do(admin, "POST", "/api/v1/assignments", string(body))
		res = gateway.ListResponse[gateway.AssignItem]{}
		if err := json.Unmarshal(out, &res); err != nil || status != 200 || len(res.Items) != 2 ||
			res.Items[0].Assignment == nil || res.Items[0].Assignment.AgentID != a2 || res.Items[0].Assignment.Generation != 2 ||
			res.Items[1].Error == nil || res.Items[1].Error.Code != apperr.Conflict || res.Items[1].Error.Status != http.StatusConflict {
			t.Fatalf("batch with a move and a conflict: %d %s", status, out)
		}
	})

	t.Run("delete", func(t *testing.T) {
		if status, body := api.do(admin, "DELETE", "/api/v1/assignments/ses-5", ""); status != http.StatusNoContent || len(body) != 0 {
			t.Fatalf("unassign: %d %s", status, body)
		}
		status, body := api.do(admin, "GET", "/api/v1/assignments/ses-5", "")
		problem("read after unassign", status, body, http.StatusNotFound, apperr.NotFound)
		// Documented as idempotent: a session without an assignment is already done.
		if status, body := api.do(admin, "DELETE", "/api/v1/assignments/ses-5", ""); status != http.StatusNoContent {
			t.Fatalf("unassign again: %d %s", status, body)
		}
		status, body = api.do(admin, "GET", "/api/v1/agents/"+string(a1)+"/assignments", "")
		if status != 200 || !strings.Contains(string(body), `"session_id":"ses-5","agent_id":"`+string(a1)+`","generation":2,"desired":"deleted"`) {
			t.Fatalf("the agent is not told to delete the unassigned session: %d %s", status, body)
		}
	})

	t.Run("another tenant", func(t *testing.T) {
		// Another tenant's agent is not found, exactly like one that does not exist.
		status, body := put(admin, "ses-6", theirs, "")
		foreign := problem("their agent", status, body, http.StatusNotFound, apperr.NotFound)
		status, body = put(admin, "ses-6", unknown, "")
		missing := problem("an unknown agent", status, body, http.StatusNotFound, apperr.NotFound)
		foreign.Instance, missing.Instance = "", ""
		if foreign.Type != missing.Type || foreign.Title != missing.Title || foreign.Detail != missing.Detail {
			t.Fatalf("their agent %+v, an unknown one %+v", foreign, missing)
		}
		// Another tenant's session (ses-2, on a2) is, for bravo, a session it has never
		// seen: reading it is 404 as for one that does not exist, unassigning it does
		// nothing, and assigning it creates bravo's own, leaving alpha's alone.
		status, body = api.do(adminB, "GET", "/api/v1/assignments/ses-2", "")
		theirsP := problem("their session", status, body, http.StatusNotFound, apperr.NotFound)
		status, body = api.do(adminB, "GET", "/api/v1/assignments/ses-none", "")
		noneP := problem("no session", status, body, http.StatusNotFound, apperr.NotFound)
		theirsP.Instance, noneP.Instance = "", ""
		if theirsP.Type != noneP.Type || theirsP.Title != noneP.Title || theirsP.Detail != noneP.Detail {
			t.Fatalf("their session %+v, a missing one %+v", theirsP, noneP)
		}
		if status, body := api.do(adminB, "DELETE", "/api/v1/assignments/ses-2", ""); status != http.StatusNoContent {
			t.Fatalf("bravo unassigning alpha's session: %d %s", status, body)
		}
		status, body = put(adminB, "ses-2", a2, `,"move":true`)
		problem("bravo moving alpha's session to alpha's agent", status, body, http.StatusNotFound, apperr.NotFound)
		if own := assignment("bravo's own ses-2")(put(adminB, "ses-2", theirs, `,"move":true`)); own.AgentID != theirs || own.Generation != 1 {
			t.Fatalf("bravo's ses-2 %+v", own)
		}
		if got := assignment("alpha's ses-2")(api.do(admin, "GET", "/api/v1/assignments/ses-2", "")); got.AgentID != a2 || got.Generation != 2 || got.Desired != wire.DesiredRunning {
			t.Fatalf("alpha's ses-2 after bravo's writes: %+v", got)
		}
	})

	t.Run("malformed", func(t *testing.T) {
		valid := `{"agent_id":"` + string(a1) + `","desired":"running"}`
		for _, c := range []struct {
			name, method, path, body, contentType string
			field                                 string // the field error expected, if any
		}{
			{"truncated JSON", "PUT", "/api/v1/assignments/ses-7", `{"agent_id":`, "", ""},
			{"not an object", "PUT", "/api/v1/assignments/ses-7", `[1]`, "", ""},
			{"unknown field", "PUT", "/api/v1/assignments/ses-7", `{"agent_id":"` + string(a1) + `","desired":"running","agent":"x"}`, "", ""},
			{"two values", "PUT", "/api/v1/assignments/ses-7", valid + valid, "", ""},
			{"not JSON", "PUT", "/api/v1/assignments/ses-7", valid, "text/plain", ""},
			{"no body", "PUT", "/api/v1/assignments/ses-7", "", "", ""},
			{"bad session id", "PUT", "/api/v1/assignments/ses%207", valid, "", "session_id"},
			{"long session id", "PUT", "/api/v1/assignments/" + strings.Repeat("s", 129), valid, "", "session_id"},
			{"bad agent id", "PUT", "/api/v1/assignments/ses-7", `{"agent_id":"agent-1","desired":"running"}`, "", "agent_id"},
			{"no agent id", "PUT", "/api/v1/assignments/ses-7", `{"desired":"running"}`, "", "agent_id"},
			{"bad desired", "PUT", "/api/v1/assignments/ses-7", `{"agent_id":"` + string(a1) + `","desired":"flying"}`, "", "desired"},
			{"spec not an object", "PUT", "/api/v1/assignments/ses-7", `{"agent_id":"` + string(a1) + `","desired":"running","spec":[1]}`, "", "spec"},
			{"batch truncated", "POST", "/api/v1/assignments", `{"items":[`, "", ""},
			{"batch item", "POST", "/api/v1/assignments", `{"items":[{"session_id":"ses-7","agent_id":"` + string(a1) + `","desired":"running"},
				{"session_id":"ses-8","agent_id":"nope","desired":"running"}]}`, "", "items/1/agent_id"},
			{"batch twice", "POST", "/api/v1/assignments", `{"items":[{"session_id":"ses-7","agent_id":"` + string(a1) + `","desired":"running"},
				{"session_id":"ses-7","agent_id":"` + string(a1) + `","desired":"running"}]}`, "", "items/1/session_id"},
			{"delete bad id", "DELETE", "/api/v1/assignments/ses%207", "", "", "session"},
		} {
			t.Run(c.name, func(t *testing.T) {
				ct := c.contentType
				if ct == "" {
					ct = "application/json"
				}
				status, body := api.doType(admin, c.method, c.path, c.body, ct)
				p := problem(c.name, status, body, http.StatusBadRequest, apperr.Invalid)
				if c.field != "" && (len(p.Errors) == 0 || p.Errors[0].Field != c.field) {
					t.Fatalf("%s: field errors %+v, want %s", c.name, p.Errors, c.field)
				}
			})
		}
		// Nothing of it was written.
		status, body := api.do(admin, "GET", "/api/v1/assignments/ses-7", "")
		problem("after malformed writes", status, body, http.StatusNotFound, apperr.NotFound)
	})

	t.Run("auth", func(t *testing.T) {
		member := api.signer.Token(t, tidA, adminSubject, auth.RoleMember)
		readOnly := api.signer.ScopedToken(t, tidA, adminSubject, auth.RoleAdmin, auth.ScopeAgentsRead)
		body := `{"agent_id":"` + string(a1) + `","desired":"running"}`
		batch := `{"items":[{"session_id":"ses-9","agent_id":"` + string(a1) + `","desired":"running"}]}`
		for _, c := range []struct {
			who, token string
			status     int
			code       apperr.Code
		}{
			{"no token", "", http.StatusUnauthorized, apperr.Unauthenticated},
			{"a garbage token", "not.a.token", http.StatusUnauthorized, apperr.Unauthenticated},
			{"a member", member, http.StatusForbidden, apperr.Forbidden},
			{"an admin's read-only token", readOnly, http.StatusForbidden, apperr.Forbidden},
		} {
			for _, r := range []struct{ method, path, body string }{
				{"PUT", "/api/v1/assignments/ses-9", body},
				{"POST", "/api/v1/assignments", batch},
				{"DELETE", "/api/v1/assignments/ses-2", ""},
			} {
				status, out := api.do(c.token, r.method, r.path, r.body)
				problem(c.who+" "+r.method+" "+r.path, status, out, c.status, c.code)
			}
		}
		// None of it took effect.
		status, out := api.do(admin, "GET", "/api/v1/assignments/ses-9", "")
		problem("after refused writes", status, out, http.StatusNotFound, apperr.NotFound)
		if got := assignment("ses-2 after refused unassigns")(api.do(admin, "GET", "/api/v1/assignments/ses-2", "")); got.AgentID != a2 {
			t.Fatalf("ses-2 %+v", got)
		}
	})
}
