package outbound

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"streamspace.dev/e2e/harness"
	"streamspace.dev/e2e/netns"
	"streamspace.dev/libs/pgserver"
)

// nsPrefix starts the name of every namespace this package creates; the stale sweep
// deletes only names with it.
const nsPrefix = "ssob-"

// Fixed ports: the control plane's namespace is new and empty, so nothing else can hold
// them, and a restarted control plane must come back on the agent's configured address.
const (
	apiAddr   = "127.0.0.1:8080"
	agentPort = "7443"
)

// The API's JSON, as far as this test reads it. Local types keep the e2e module free of
// the services' modules: the test sees only what any API client sees.
type (
	agentView struct {
		ID       string     `json:"id"`
		Name     string     `json:"name"`
		State    string     `json:"state"`
		Gateway  string     `json:"gateway_id"`
		LastSeen *time.Time `json:"last_seen"`
	}
	assignmentView struct {
		SessionID       string          `json:"session_id"`
		AgentID         string          `json:"agent_id"`
		Generation      int64           `json:"generation"`
		AckedGeneration int64           `json:"acked_generation"`
		AckError        json.RawMessage `json:"ack_error"`
	}
	statusView struct {
		SessionID          string     `json:"session_id"`
		AgentID            string     `json:"agent_id"`
		Phase              string     `json:"phase"`
		ObservedGeneration int64      `json:"observed_generation"`
		LastTransition     *time.Time `json:"last_transition"`
	}
)

// TestAgentTunnelIsOutboundOnly is issue 5's proof: an agent behind a firewall that drops
// every new inbound connection enrolls, connects, receives desired state, acknowledges
// it, reports status, reconnects after the control plane restarts and receives work
// written while it was cut off; meanwhile nothing can open a connection into its site.
// See the package documentation for the layout.
func TestAgentTunnelIsOutboundOnly(t *testing.T) {
	netns.RequireRoot(t, "the outbound-only test")
	if _, err := pgserver.Binaries(); err != nil {
		t.Fatalf("%v (or run `bash infra/dev/ensure-postgres.sh` as root)", err)
	}
	netns.SweepStale(t, nsPrefix)
	began := time.Now()

	// Build first: it is the slow part, and nothing needs cleaning up yet if it fails.
	cpBin := harness.Build(t, "streamspace.dev/services/streamspace/cmd/streamspace")
	agentBin := harness.Build(t, "streamspace.dev/agent/cmd/streamspace-agent")
	t.Logf("binaries built in %v", time.Since(began).Round(time.Millisecond))

	s := netns.NewPair(t, nsPrefix)
	lis := netns.StartListeners(t, s.Site, netns.SiteIP)
	// A positive control: before the firewall, the gateway's side does reach the
	// listeners, so their later silence is the firewall's doing and not a routing fault.
	netns.RequireReachable(t, s.Control, lis, "the veth pair works before the firewall is loaded")
	s.FirewallSite(t)

	t.Run("inbound connections to the agent's site are dropped", func(t *testing.T) {
		netns.RequireBlocked(t, s.Control, lis)
		netns.RequireReachable(t, s.Site, lis, "the same listeners must still answer from inside the site")
	})
	if t.Failed() {
		t.FailNow()
	}

	// The private PostgreSQL runs in the control plane's namespace, whose deletion comes
	// after its cleanup.
	dataDir := harness.DevDataDir(t)
	gwAddr := netns.ControlIP + ":" + agentPort
	cpArgs := []string{"dev", "--data-dir", dataDir, "--listen", apiAddr, "--log-level", "info",
		"--agent-listen", gwAddr, "--agent-server-names", netns.ControlIP,
		// Short liveness settings, so losing the agent shows within seconds; the
		// keep-alive stays far below the 30 s UDP conntrack timeout of the agent's
		// firewall either way.
		"--agent-heartbeat", "1s", "--agent-degraded-after", "3s", "--agent-offline-after", "6s",
		"--agent-keepalive", "1s", "--agent-idle-timeout", "3s", "--agent-resync", "2s"}
	cp := harness.Start(t, "control plane (1st)", s.Control, cpBin, harness.BaseEnv(), cpArgs...)
	a := harness.NewAPI(t, s.Control, "http://"+apiAddr, false)
	a.WaitReady(cp, 90*time.Second)

	// The operator's side, entirely through the public API.
	var signup struct {
		Tenant struct {
			ID string `json:"id"`
		} `json:"tenant"`
	}
	a.Call("POST", "/api/v1/signup", "", map[string]string{"tenant_name": "Initech", "slug": "initech",
		"email": "ops@initech.test", "password": "a long enough passphrase"}, &signup, 201)
	var login struct {
		AccessToken string `json:"access_token"`
	}
	a.Call("POST", "/api/v1/auth/login", "", map[string]string{"tenant": "initech", "email": "ops@initech.test",
		"password": "a long enough passphrase"}, &login, 200)
	admin := login.AccessToken
	if admin == "" {
		t.Fatal("login returned no access token")
	}
	var tok struct {
		Token string `json:"token"`
	}
	a.Call("POST", "/api/v1/enrollment-tokens", admin, map[string]any{"name": "site-1"}, &tok, 201)
	// The CA is public: an operator hands it to the agent with the token, so the agent
	// can verify the enrollment endpoint before it holds any credential.
	status, caPEM, err := a.Do("GET", "/api/v1/agents/ca.pem", "", nil)
	if err != nil || status != 200 {
		t.Fatalf("GET /api/v1/agents/ca.pem: %d %v", status, err)
	}
	agentDir := t.TempDir()
	caFile, tokFile := filepath.Join(agentDir, "ca.pem"), filepath.Join(agentDir, "token")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokFile, []byte(tok.Token), 0o600); err != nil {
		t.Fatal(err)
	}

	agentArgs := []string{"--gateway", gwAddr, "--enroll-url", "https://" + gwAddr + "/api/v1/agents/enroll",
		"--ca-file", caFile, "--token-file", tokFile, "--state-dir", filepath.Join(agentDir, "state"),
		"--name", "site-1", "--log-level", "debug",
		"--keepalive", "1s", "--idle-timeout", "3s", "--heartbeat", "1s",
		"--backoff-initial", "100ms", "--backoff-max", "1s", "--drain-timeout", "2s"}
	ag := harness.Start(t, "agent", s.Site, agentBin, harness.BaseEnv(), agentArgs...)

	getAgents := func() []agentView {
		var l struct {
			Items []agentView `json:"items"`
		}
		a.Call("GET", "/api/v1/agents", admin, nil, &l, 200)
		return l.Items
	}
	getAssignment := func(sess string) assignmentView {
		var v assignmentView
		a.Call("GET", "/api/v1/assignments/"+sess, admin, nil, &v, 200)
		return v
	}
	getStatus := func(sess string) (statusView, error) {
		code, b, err := a.Do("GET", "/api/v1/session-status/"+sess, admin, nil)
		if err != nil {
			return statusView{}, err
		}
		if code != 200 {
			return statusView{}, fmt.Errorf("GET /api/v1/session-status/%s: %d %s", sess, code, b)
		}
		var v statusView
		return v, json.Unmarshal(b, &v)
	}
	waitRunning := func(t *testing.T, sess string, gen int64) statusView {
		t.Helper()
		var st statusView
		harness.Eventually(t, 15*time.Second, "status of "+sess+" running at generation "+fmt.Sprint(gen), func() error {
			var err error
			if st, err = getStatus(sess); err != nil {
				return err
			}
			if st.Phase != "running" || st.ObservedGeneration != gen {
				return fmt.Errorf("agent reports %s at observed generation %d", st.Phase, st.ObservedGeneration)
			}
			return nil
		})
		return st
	}
	var agentID, firstGateway string

	// Each step depends on the ones before, so the first failure ends the test: later
	// failures would only be echoes of it.
	// The API client and the helpers fail the step being run, not its parent.
	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, func(st *testing.T) {
			a.T = st
			defer func() { a.T = t }()
			f(st)
		}) {
			t.FailNow()
		}
	}
	// Processes started inside a step must outlive it: they are the parent's.
	parent := t

	step("1 enroll with a token created through the API", func(t *testing.T) {
		harness.Eventually(t, 20*time.Second, "the agent is in the registry and saved its credential", func() error {
			if ag.Exited() {
				t.Fatalf("the agent exited during enrollment (%v)", ag.Err())
			}
			l := getAgents()
			if len(l) != 1 {
				return fmt.Errorf("%d agents registered, want 1 (enrollment over https://%s through the agent's firewall)", len(l), gwAddr)
			}
			if l[0].Name != "site-1" {
				return fmt.Errorf("registered as %q, want the token's name site-1", l[0].Name)
			}
			agentID = l[0].ID
			// The gateway registers the agent before its answer reaches the agent, which
			// saves the credential (agent.pem in its state directory) only then.
			if _, err := os.Stat(filepath.Join(agentDir, "state", "agent.pem")); err != nil {
				return fmt.Errorf("the agent saved no credential: %v", err)
			}
			return nil
		})
	})

	step("2 connect the tunnel", func(t *testing.T) {
		harness.Eventually(t, 15*time.Second, "the agent is online and says its tunnel is up", func() error {
			l := getAgents()
			if len(l) != 1 || l[0].State != "online" || l[0].Gateway == "" || l[0].LastSeen == nil {
				return fmt.Errorf("registry shows %+v, want one agent online with a gateway replica and last_seen", l)
			}
			firstGateway = l[0].Gateway
			// The gateway marks the agent online before its HelloAck reaches the agent,
			// which logs "tunnel up" only then.
			if ag.Count(`"tunnel up"`) == 0 {
				return fmt.Errorf("the registry says online but the agent has not logged \"tunnel up\"")
			}
			return nil
		})
	})

	var gen1 int64
	var st1 statusView
	step("3 deliver desired state written through the API", func(t *testing.T) {
		before := ag.Count(`"applied desired state"`)
		var as assignmentView
		a.Call("PUT", "/api/v1/assignments/sess-1", admin, map[string]any{"agent_id": agentID, "desired": "running",
			"spec": map[string]any{"template": "firefox"}}, &as, 200)
		gen1 = as.Generation
		if gen1 < 1 || as.AgentID != agentID {
			t.Fatalf("assignment written as %+v", as)
		}
		harness.Eventually(t, 10*time.Second, "the agent received the change", func() error {
			if ag.Count(`"applied desired state"`) <= before {
				return fmt.Errorf("no new \"applied desired state\" line in the agent's log (a gateway-opened stream through the site's firewall)")
			}
			return nil
		})
	})

	step("4 acknowledge: acked_generation visible through the API", func(t *testing.T) {
		harness.Eventually(t, 10*time.Second, "sess-1 acknowledged", func() error {
			v := getAssignment("sess-1")
			if v.AckedGeneration != gen1 {
				return fmt.Errorf("acked_generation %d, generation %d, ack_error %s", v.AckedGeneration, v.Generation, v.AckError)
			}
			return nil
		})
	})

	step("5 report status: observed state visible through the API", func(t *testing.T) {
		st1 = waitRunning(t, "sess-1", gen1)
		if st1.AgentID != agentID || st1.LastTransition == nil {
			t.Fatalf("status %+v: want the agent's id and a last transition", st1)
		}
	})

	step("6 reconnect after the control plane restarts", func(t *testing.T) {
		ups := ag.Count(`"tunnel up"`)
		if err := cp.Stop(t); err != nil {
			t.Fatalf("the control plane did not stop cleanly on SIGTERM: %v", err)
		}
		if ag.Exited() {
			t.Fatalf("the agent gave up when the control plane stopped (%v)", ag.Err())
		}
		cp = harness.Start(parent, "control plane (2nd)", s.Control, cpBin, harness.BaseEnv(), cpArgs...)
		a.WaitReady(cp, 60*time.Second)
		harness.Eventually(t, 20*time.Second, "the agent reconnected to the new process", func() error {
			l := getAgents()
			if len(l) != 1 || l[0].State != "online" || l[0].Gateway == "" || l[0].Gateway == firstGateway {
				return fmt.Errorf("registry shows %+v, want the agent online on a replica other than %s", l, firstGateway)
			}
			if ag.Count(`"tunnel up"`) <= ups {
				return fmt.Errorf("the agent has not logged a new \"tunnel up\"")
			}
			return nil
		})
		if v := getAssignment("sess-1"); v.Generation != gen1 || v.AckedGeneration != gen1 {
			t.Fatalf("sess-1 after the restart: %+v, want generation and acked_generation %d", v, gen1)
		}
	})

	step("7 deliver work written while the agent was cut off", func(t *testing.T) {
		ups := ag.Count(`"tunnel up"`)
		s.SetSiteLink(t, false)
		linkDown := true
		defer func() {
			if linkDown {
				s.SetSiteLink(t, true)
			}
		}()
		harness.Eventually(t, 20*time.Second, "the control plane sees the agent gone", func() error {
			if l := getAgents(); len(l) != 1 || l[0].State == "online" {
				return fmt.Errorf("registry shows %+v, want the agent not online", l)
			}
			return nil
		})
		var as assignmentView
		a.Call("PUT", "/api/v1/assignments/sess-2", admin, map[string]any{"agent_id": agentID, "desired": "running"}, &as, 200)
		// Two resync periods: were the agent somehow still reachable, it would have
		// acknowledged by now.
		time.Sleep(4 * time.Second)
		if v := getAssignment("sess-2"); v.AckedGeneration != 0 {
			t.Fatalf("sess-2 was acknowledged (%+v) while the agent's uplink was down", v)
		}
		s.SetSiteLink(t, true)
		linkDown = false
		harness.Eventually(t, 20*time.Second, "sess-2 acknowledged after the agent came back", func() error {
			if v := getAssignment("sess-2"); v.AckedGeneration != as.Generation {
				return fmt.Errorf("acked_generation %d, want %d", v.AckedGeneration, as.Generation)
			}
			return nil
		})
		if ag.Count(`"tunnel up"`) <= ups {
			t.Fatal("sess-2 acknowledged without the agent logging a new \"tunnel up\"")
		}
		waitRunning(t, "sess-2", as.Generation)
		// Nothing applied twice: sess-1 was reconciled on both reconnects but, its
		// generation unchanged, never re-applied, so it never left running.
		st, err := getStatus("sess-1")
		if err != nil {
			t.Fatal(err)
		}
		if st.Phase != "running" || st.ObservedGeneration != gen1 || !st.LastTransition.Equal(*st1.LastTransition) {
			t.Fatalf("sess-1 changed across reconnects: %+v, was %+v", st, st1)
		}
	})

	t.Run("inbound is still dropped while the tunnel is up", func(t *testing.T) {
		// The tunnel's own conntrack entry must not open the site to anyone else.
		netns.RequireBlocked(t, s.Control, lis)
	})

	if err := ag.Stop(t); err != nil {
		t.Errorf("the agent did not drain cleanly on SIGTERM: %v", err)
	}
	t.Logf("whole test in %v", time.Since(began).Round(time.Millisecond))
}
