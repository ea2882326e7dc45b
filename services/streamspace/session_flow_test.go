package streamspace_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"streamspace.dev/agent/daemon"
	gateway "streamspace.dev/services/agent-gateway"
	"streamspace.dev/services/identity"
	"streamspace.dev/services/sessions"
)

// TestSessionReachesRunningOnAnEnrolledAgent is the "done when": through the
// all-in-one API, a session created from a catalog template reaches Running on an agent
// (the real agent daemon, in-process backend) enrolled with a token from the API, over
// the real QUIC tunnel; then hibernates, wakes on the same agent, stops and is deleted.
func TestSessionReachesRunningOnAnEnrolledAgent(t *testing.T) {
	p := startPlane(t)
	gw := p.Gateway

	var signup identity.SignupResult
	p.call("POST", "/api/v1/signup", "", identity.Signup{TenantName: "Hooli", Slug: "hooli", Email: "g@hooli.test", Password: "a long enough passphrase"}, nil, &signup, 201)
	admin := signup.Tokens.AccessToken
	var tok identity.CreatedEnrollmentToken
	p.call("POST", "/api/v1/enrollment-tokens", admin, identity.NewEnrollmentToken{Name: "cluster-1"}, nil, &tok, 201)

	agentCtx, stopAgent := context.WithCancel(context.Background())
	agentDone := make(chan error, 1)
	cfg := daemon.Config{Gateway: gw.Gateway().Addr(), ServerName: "localhost", EnrollURL: p.Base + gateway.EnrollPath,
		Token: tok.Token, StateDir: t.TempDir(), Name: "cluster-1", LogLevel: "warn", Backend: "memory",
		KeepAlive: time.Second, IdleTimeout: 10 * time.Second, Heartbeat: time.Second,
		BackoffInitial: 50 * time.Millisecond, BackoffMax: time.Second, DrainTimeout: time.Second}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	go func() { agentDone <- daemon.Run(agentCtx, cfg, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() {
		stopAgent()
		<-agentDone
	})

	var s sessions.Session
	p.call("POST", "/api/v1/sessions", admin, sessions.NewSession{Template: "firefox"}, nil, &s, 201)
	get := func() sessions.Session {
		var got sessions.Session
		p.call("GET", "/api/v1/sessions/"+string(s.ID), admin, nil, nil, &got, 200)
		return got
	}
	waitPhase := func(want sessions.Phase) sessions.Session {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			got := get()
			if got.Phase == want {
				return got
			}
			if time.Now().After(deadline) {
				t.Fatalf("session is %s/%s (%s), want %s", got.Phase, got.Reason, got.Message, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	running := waitPhase(sessions.PhaseRunning)
	if running.AgentID == "" || running.Endpoint == nil {
		t.Fatalf("running without agent or endpoint: %+v", running)
	}
	p.call("POST", "/api/v1/sessions/"+string(s.ID)+"/hibernate", admin, nil, nil, nil, 200)
	waitPhase(sessions.PhaseHibernated)
	p.call("POST", "/api/v1/sessions/"+string(s.ID)+"/wake", admin, nil, nil, nil, 200)
	if again := waitPhase(sessions.PhaseRunning); again.AgentID != running.AgentID {
		t.Fatalf("woke on %s, was on %s", again.AgentID, running.AgentID)
	}
	p.call("POST", "/api/v1/sessions/"+string(s.ID)+"/stop", admin, nil, nil, nil, 200)
	waitPhase(sessions.PhaseStopped)
	p.call("DELETE", "/api/v1/sessions/"+string(s.ID), admin, nil, nil, nil, 204)

	req, _ := http.NewRequest("GET", p.Base+"/api/v1/sessions/"+string(s.ID)+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 404 || strings.Contains(string(b), `"items"`) {
		t.Fatalf("a deleted session's history is served: %d %s", resp.StatusCode, b)
	}
}
