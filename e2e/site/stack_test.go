package site

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"streamspace.dev/e2e/harness"
	"streamspace.dev/e2e/kube"
	"streamspace.dev/e2e/netns"
	"streamspace.dev/libs/pgserver"
)

// nsPrefix starts the name of every namespace this package creates; the stale sweep
// deletes only names with it.
const nsPrefix = "sssite-"

// Fixed addresses: the control plane's namespace is new and empty, so nothing else can
// hold them.
const (
	apiAddr   = "127.0.0.1:8080"
	agentPort = "7443"
	// sessionNS is the customer's namespace for sessions.
	sessionNS = "streamspace-sessions"
	// streamPort is the stream port of the test's template; the site's stub listens on
	// it for every Pod IP.
	streamPort = 6901
	// templateName is the tenant template the sessions are created from.
	templateName = "site-desktop"
)

// The API's JSON, as far as this package reads it. Local types keep the e2e module free
// of the services' modules: the test sees only what any API client sees.
type (
	sessionView struct {
		ID         string `json:"id"`
		Template   string `json:"template"`
		Desired    string `json:"desired"`
		Generation int64  `json:"generation"`
		Phase      string `json:"phase"`
		Reason     string `json:"reason"`
		Message    string `json:"message"`
		AgentID    string `json:"agent_id"`
		Endpoint   *struct {
			Host     string `json:"host"`
			Port     int    `json:"port"`
			Protocol string `json:"protocol"`
		} `json:"endpoint"`
	}
	agentView struct {
		ID    string `json:"id"`
		Name  string `json:"name"`
		State string `json:"state"`
	}
)

// stack is everything the test runs: the two namespaces, the control plane, the
// customer's cluster and agent, and the operator's view through the API.
type stack struct {
	t        testing.TB
	pair     *netns.Pair
	kube     *kube.Cluster
	cp       *harness.Proc
	api      *harness.API
	agentBin string
	agentDir string
	agent    *harness.Proc
	// dials counts connections the site's stub stream endpoint accepted: the agent's
	// Running probes.
	dials *atomic.Int64

	admin   string // the tenant owner's access token
	agentID string
}

// up builds the binaries and starts everything but the agent: the namespaces and the
// site's firewall (proving inbound is dropped), the stub stream endpoint, the local
// Kubernetes control plane inside the site (with kubeOpts, whose NetNS up sets) and the
// control plane beside it.
func up(t testing.TB, kubeOpts kube.Options) *stack {
	t.Helper()
	netns.RequireRoot(t, "the end-to-end test")
	if _, err := pgserver.Binaries(); err != nil {
		t.Fatalf("%v (or run `bash infra/dev/ensure-postgres.sh` as root)", err)
	}
	netns.SweepStale(t, nsPrefix)
	began := time.Now()

	// Build first: it is the slow part, and nothing needs cleaning up yet if it fails.
	s := &stack{t: t, dials: new(atomic.Int64)}
	cpBin := harness.Build(t, "streamspace.dev/services/streamspace/cmd/streamspace")
	s.agentBin = harness.Build(t, "streamspace.dev/agent/cmd/streamspace-agent")
	t.Logf("binaries built in %v", time.Since(began).Round(time.Millisecond))

	s.pair = netns.NewPair(t, nsPrefix)
	lis := netns.StartListeners(t, s.pair.Site, netns.SiteIP)
	// A positive control: before the firewall, the control plane's side reaches the
	// site's listeners, so their later silence is the firewall's doing.
	netns.RequireReachable(t, s.pair.Control, lis, "the veth pair works before the firewall is loaded")
	s.pair.FirewallSite(t)
	netns.RequireBlocked(t, s.pair.Control, lis)
	netns.RequireReachable(t, s.pair.Site, lis, "the same listeners must still answer from inside the site")
	if t.Failed() {
		t.FailNow()
	}
	s.stubPods(t)

	step := time.Now()
	kubeOpts.NetNS = s.pair.Site
	s.kube = kube.ForTest(t, kubeOpts)
	t.Logf("kubernetes up inside the site in %v", time.Since(step).Round(time.Millisecond))
	s.createNamespace(t)

	// The private PostgreSQL runs in the control plane's namespace, whose deletion comes
	// after its cleanup.
	dataDir := harness.DevDataDir(t)
	gwAddr := netns.ControlIP + ":" + agentPort
	s.cp = harness.Start(t, "control plane", s.pair.Control, cpBin, harness.BaseEnv(),
		"dev", "--data-dir", dataDir, "--listen", apiAddr, "--log-level", "info",
		"--agent-listen", gwAddr, "--agent-server-names", netns.ControlIP,
		// Short liveness settings, so a killed agent shows within seconds; the
		// keep-alive stays far below the site firewall's 30 s UDP conntrack timeout.
		"--agent-heartbeat", "1s", "--agent-degraded-after", "3s", "--agent-offline-after", "6s",
		"--agent-keepalive", "1s", "--agent-idle-timeout", "3s", "--agent-resync", "2s")
	s.api = harness.NewAPI(t, s.pair.Control, "http://"+apiAddr, true)
	s.api.WaitReady(s.cp, 90*time.Second)
	t.Logf("stack up in %v", time.Since(began).Round(time.Millisecond))
	return s
}

// stubPods makes every Pod IP kwok hands out local to the site and answers on the
// stream port for all of them, so the agent's real resolver and dialer (PodIP:port)
// reach a real socket.
func (s *stack) stubPods(t testing.TB) {
	t.Helper()
	if _, err := netns.Run("ip", "-n", s.pair.Site, "route", "add", "local", kube.PodCIDR, "dev", "lo"); err != nil {
		t.Fatal(err)
	}
	l, err := netns.Listen(s.pair.Site, "tcp", fmt.Sprintf("0.0.0.0:%d", streamPort))
	if err != nil {
		t.Fatalf("the site's stub stream endpoint: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.dials.Add(1)
			_, _ = c.Write([]byte("hello\n"))
			c.Close()
		}
	}()
}

// createNamespace creates the sessions' namespace and waits for its default
// ServiceAccount, without which the ReplicaSet controller's Pods are refused.
func (s *stack) createNamespace(t testing.TB) {
	t.Helper()
	ctx := context.Background()
	if err := s.kube.Do(ctx, "POST", "/api/v1/namespaces", map[string]any{
		"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": sessionNS}}, nil); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 30*time.Second, "the sessions namespace's default ServiceAccount", func() error {
		return s.kube.Do(ctx, "GET", "/api/v1/namespaces/"+sessionNS+"/serviceaccounts/default", nil, nil)
	})
}

// signup signs a tenant up through the public API, keeps its owner's access token, and
// creates the template the sessions use: a desktop whose stream port is the stub's.
func (s *stack) signup(t testing.TB) {
	t.Helper()
	var out struct {
		Tenant struct {
			ID   string `json:"id"`
			Slug string `json:"slug"`
		} `json:"tenant"`
		Tokens struct {
			AccessToken string `json:"access_token"`
		} `json:"tokens"`
	}
	s.api.Call("POST", "/api/v1/signup", "", map[string]string{"tenant_name": "Initech", "slug": "initech",
		"email": "ops@initech.test", "password": "a long enough passphrase"}, &out, 201)
	if out.Tenant.ID == "" || out.Tenant.Slug != "initech" || out.Tokens.AccessToken == "" {
		t.Fatalf("signup answered %+v: want the tenant and its owner's tokens", out)
	}
	s.admin = out.Tokens.AccessToken
	s.createTemplate(t, templateName, true)
	// Room for the benchmark's sessions: the default is ten per user.
	s.api.Call("PUT", "/api/v1/session-settings", s.admin, map[string]any{
		"user": map[string]int{"max_sessions": 1000}, "tenant": map[string]int{"max_sessions": 1000}}, nil, 200)
}

// createTemplate creates a tenant template through the API: a desktop whose stream port
// is the stub's, with a persistent home if home.
func (s *stack) createTemplate(t testing.TB, name string, home bool) {
	t.Helper()
	tpl := map[string]any{
		"name": name, "display_name": "Site desktop", "description": "A desktop for the end-to-end test.",
		"category": "Desktops", "image": "lscr.io/linuxserver/webtop:latest",
		"resources": map[string]any{"requests": map[string]string{"cpu": "250m", "memory": "256Mi"},
			"limits": map[string]string{"cpu": "1", "memory": "1Gi"}},
		"ports": []map[string]any{{"name": "vnc", "port": streamPort, "protocol": "TCP", "stream": "vnc-web"}},
	}
	if home {
		tpl["home"] = map[string]string{"mount_path": "/config", "size": "1Gi"}
	}
	s.api.Call("POST", "/api/v1/templates", s.admin, tpl, nil, 201)
}

// enroll creates an enrollment token through the API, starts the agent inside the site
// with it and the public CA, and waits until the registry shows it online. The agent
// lives as long as owner (t, or the test t is a step of).
func (s *stack) enroll(t, owner testing.TB) {
	t.Helper()
	var tok struct {
		Token string `json:"token"`
	}
	s.api.Call("POST", "/api/v1/enrollment-tokens", s.admin, map[string]any{"name": "site-1"}, &tok, 201)
	// The CA is public: an operator hands it to the agent with the token, so the agent
	// can verify the enrollment endpoint before it holds any credential.
	status, caPEM, err := s.api.Do("GET", "/api/v1/agents/ca.pem", "", nil)
	if err != nil || status != 200 {
		t.Fatalf("GET /api/v1/agents/ca.pem: %d %v", status, err)
	}
	s.agentDir = owner.TempDir()
	for name, b := range map[string][]byte{"ca.pem": caPEM, "token": []byte(tok.Token)} {
		if err := os.WriteFile(filepath.Join(s.agentDir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s.startAgent(owner)
	harness.Eventually(t, 60*time.Second, "the agent is enrolled and online", func() error {
		if s.agent.Exited() {
			t.Fatalf("the agent exited (%v)", s.agent.Err())
		}
		l := s.agents(t)
		if len(l) != 1 || l[0].State != "online" || l[0].Name != "site-1" {
			return fmt.Errorf("registry shows %+v, want one agent site-1 online (enrollment and tunnel through the site's firewall)", l)
		}
		s.agentID = l[0].ID
		return nil
	})
}

// startAgent starts streamspace-agent inside the site with the Kubernetes backend. Its
// state directory keeps the credential from the first enrollment, so a restart
// reconnects without a new token.
func (s *stack) startAgent(t testing.TB) {
	t.Helper()
	gw := netns.ControlIP + ":" + agentPort
	s.agent = harness.Start(t, "agent", s.pair.Site, s.agentBin, harness.BaseEnv(),
		"--gateway", gw, "--enroll-url", "https://"+gw+"/api/v1/agents/enroll",
		"--ca-file", filepath.Join(s.agentDir, "ca.pem"), "--token-file", filepath.Join(s.agentDir, "token"),
		"--state-dir", filepath.Join(s.agentDir, "state"), "--name", "site-1", "--log-level", "info",
		"--backend", "kubernetes", "--namespace", sessionNS, "--kubeconfig", s.kube.Kubeconfig(),
		"--kube-qps", "500", "--kube-burst", "1000",
		"--keepalive", "1s", "--idle-timeout", "3s", "--heartbeat", "1s",
		"--backoff-initial", "100ms", "--backoff-max", "1s", "--drain-timeout", "2s")
}

func (s *stack) agents(t testing.TB) []agentView {
	t.Helper()
	var l struct {
		Items []agentView `json:"items"`
	}
	s.api.Call("GET", "/api/v1/agents", s.admin, nil, &l, 200)
	return l.Items
}

// create creates a session from the test's template.
func (s *stack) create(t testing.TB) sessionView {
	t.Helper()
	var v sessionView
	s.api.Call("POST", "/api/v1/sessions", s.admin, map[string]string{"template": templateName}, &v, 201)
	if v.ID == "" || v.Template != templateName {
		t.Fatalf("created %+v", v)
	}
	return v
}

// session reads a session through the API.
func (s *stack) session(t testing.TB, id string) sessionView {
	t.Helper()
	var v sessionView
	s.api.Call("GET", "/api/v1/sessions/"+id, s.admin, nil, &v, 200)
	return v
}

// waitPhase polls the API until the session is in phase, failing early on Failed.
func (s *stack) waitPhase(t testing.TB, id, phase string, timeout time.Duration) sessionView {
	t.Helper()
	var v sessionView
	harness.Eventually(t, timeout, "session "+id+" "+phase+" through the API", func() error {
		v = s.session(t, id)
		if v.Phase == "Failed" && phase != "Failed" {
			t.Fatalf("session %s Failed: %s: %s", id, v.Reason, v.Message)
		}
		if v.Phase != phase {
			return fmt.Errorf("phase %s (%s: %s), desired %s", v.Phase, v.Reason, v.Message, v.Desired)
		}
		return nil
	})
	return v
}

// object is a Kubernetes object, as far as the test reads it.
type object struct {
	Metadata struct {
		Name              string            `json:"name"`
		UID               string            `json:"uid"`
		Labels            map[string]string `json:"labels"`
		Annotations       map[string]string `json:"annotations"`
		DeletionTimestamp *string           `json:"deletionTimestamp"`
		OwnerReferences   []struct {
			Kind string `json:"kind"`
			Name string `json:"name"`
		} `json:"ownerReferences"`
	} `json:"metadata"`
	Spec struct {
		Replicas   *int32 `json:"replicas"`
		VolumeName string `json:"volumeName"`
	} `json:"spec"`
	Status struct {
		Replicas      int32  `json:"replicas"`
		ReadyReplicas int32  `json:"readyReplicas"`
		Phase         string `json:"phase"`
		PodIP         string `json:"podIP"`
	} `json:"status"`
}

// kinds maps the kinds the test reads to their collection paths in sessionNS.
var kinds = map[string]string{
	"Deployment":            "/apis/apps/v1/namespaces/" + sessionNS + "/deployments",
	"Pod":                   "/api/v1/namespaces/" + sessionNS + "/pods",
	"Service":               "/api/v1/namespaces/" + sessionNS + "/services",
	"Secret":                "/api/v1/namespaces/" + sessionNS + "/secrets",
	"ConfigMap":             "/api/v1/namespaces/" + sessionNS + "/configmaps",
	"PersistentVolumeClaim": "/api/v1/namespaces/" + sessionNS + "/persistentvolumeclaims",
}

// sessionLabel is the label the agent puts on every object of a session; a session id
// of the API's shape is its own label value.
const sessionLabel = "streamspace.dev/session"

// objects lists the objects of kind labelled with session id.
func (s *stack) objects(t testing.TB, kind, id string) []object {
	t.Helper()
	var l struct {
		Items []object `json:"items"`
	}
	path := kinds[kind] + "?labelSelector=" + url.QueryEscape(sessionLabel+"="+id)
	if err := s.kube.Do(context.Background(), "GET", path, nil, &l); err != nil {
		t.Fatalf("listing %s: %v", kind, err)
	}
	return l.Items
}

// one returns the single object of kind of session id, or an error saying what is there.
func (s *stack) one(t testing.TB, kind, id string) (object, error) {
	l := s.objects(t, kind, id)
	if len(l) != 1 {
		return object{}, fmt.Errorf("%d %ss of session %s, want 1", len(l), kind, id)
	}
	return l[0], nil
}

// liveStream is the API's live stream of session changes (server-sent events), read for
// the whole test.
type liveStream struct {
	mu     sync.Mutex
	events []liveEvent
	err    error
	// running holds, per session, when its first Running event arrived, and a channel
	// closed then.
	running map[string]*arrival
}

type arrival struct {
	at   time.Time
	done chan struct{}
}

// arrival returns the record of session id's first Running event; its channel is
// closed once it has arrived. The caller holds ls.mu.
func (ls *liveStream) arrival(id string) *arrival {
	a := ls.running[id]
	if a == nil {
		a = &arrival{done: make(chan struct{})}
		ls.running[id] = a
	}
	return a
}

// runningCh returns a channel closed when session id's first Running event arrives,
// and a function returning its arrival time.
func (ls *liveStream) runningCh(id string) (<-chan struct{}, func() time.Time) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	a := ls.arrival(id)
	return a.done, func() time.Time {
		ls.mu.Lock()
		defer ls.mu.Unlock()
		return a.at
	}
}

type liveEvent struct {
	kind    string // "session" or "deleted"
	session sessionView
}

// watch opens the live stream as the tenant's owner and reads it until the test ends.
func (s *stack) watch(t testing.TB) *liveStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := s.api.Stream(ctx, "/api/v1/sessions:watch", s.admin)
	if err != nil {
		cancel()
		t.Fatalf("opening the live stream: %v", err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		resp.Body.Close()
		cancel()
		t.Fatalf("the live stream answered %s, %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	ls := &liveStream{running: map[string]*arrival{}}
	done := make(chan struct{})
	t.Cleanup(func() {
		cancel()
		<-done
	})
	go func() {
		defer close(done)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		var event, data string
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				event = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				data = strings.TrimPrefix(line, "data: ")
			case line == "" && event != "":
				ev := liveEvent{kind: event}
				err := json.Unmarshal([]byte(data), &ev.session)
				now := time.Now()
				ls.mu.Lock()
				if err != nil {
					ls.err = fmt.Errorf("undecodable %s event %q: %w", event, data, err)
				}
				if event == "session" && ev.session.Phase == "Running" {
					if a := ls.arrival(ev.session.ID); a.at.IsZero() {
						a.at = now
						close(a.done)
					}
				}
				ls.events = append(ls.events, ev)
				ls.mu.Unlock()
				event, data = "", ""
			}
		}
		ls.mu.Lock()
		if ls.err == nil && ctx.Err() == nil {
			ls.err = fmt.Errorf("the live stream ended: %v", sc.Err())
		}
		ls.mu.Unlock()
	}()
	return ls
}

// mark returns a position in the stream: wait looks only at events after it.
func (ls *liveStream) mark() int {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return len(ls.events)
}

// wait waits for an event of kind ("session" or "deleted") about session id, after
// position since, whose phase is phase (for "session").
func (ls *liveStream) wait(t testing.TB, since int, kind, id, phase string, timeout time.Duration) {
	t.Helper()
	what := fmt.Sprintf("a live %q event for session %s %s", kind, id, phase)
	harness.Eventually(t, timeout, what, func() error {
		ls.mu.Lock()
		defer ls.mu.Unlock()
		if ls.err != nil {
			return ls.err
		}
		var seen []string
		for _, ev := range ls.events[since:] {
			if ev.session.ID != id {
				continue
			}
			if ev.kind == kind && (kind != "session" || ev.session.Phase == phase) {
				return nil
			}
			seen = append(seen, ev.kind+":"+ev.session.Phase)
		}
		return fmt.Errorf("events for it so far: %v", seen)
	})
}

// errGone is what absent reports for an object that still exists.
var errGone = errors.New("still exists")

// absent returns nil when session id has no object of any of kinds.
func (s *stack) absent(t testing.TB, id string, kinds ...string) error {
	for _, k := range kinds {
		if l := s.objects(t, k, id); len(l) > 0 {
			return fmt.Errorf("%s %s: %w", k, l[0].Metadata.Name, errGone)
		}
	}
	return nil
}
