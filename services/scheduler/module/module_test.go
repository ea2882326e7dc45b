package module_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/auth/authtest"
	"streamspace.dev/libs/poll"
	"streamspace.dev/libs/tenant"
	"streamspace.dev/libs/wire"
	gateway "streamspace.dev/services/agent-gateway"
	gwpostgres "streamspace.dev/services/agent-gateway/postgres"
	"streamspace.dev/services/catalog"
	catpostgres "streamspace.dev/services/catalog/postgres"
	"streamspace.dev/services/scheduler"
	"streamspace.dev/services/scheduler/module"
	"streamspace.dev/services/scheduler/postgres"
	"streamspace.dev/services/sessions"
	sessmod "streamspace.dev/services/sessions/module"
	sesspg "streamspace.dev/services/sessions/postgres"
	"streamspace.dev/tenants/tenantstest"
)

// world is one tenant with the real sessions service, scheduler pass and sessions
// controller over the gateway's real store; agents are driven through the gateway's
// store exactly as its tunnel drives them.
type world struct {
	t      *testing.T
	env    *tenantstest.Env
	tid    tenant.ID
	gw     *gwpostgres.Store
	svc    sessions.Service
	store  *sesspg.Store
	ctrl   *sessmod.Controller
	loop   *module.Loop
	sys    context.Context
	logger *slog.Logger
}

func newWorld(t *testing.T, cfg module.Config) *world {
	t.Helper()
	env := tenantstest.New(t)
	tn, _ := env.Tenant(t, "acme")
	w := &world{t: t, env: env, tid: tn.ID, sys: auth.AsSystem(context.Background(), tn.ID, "test"), logger: slog.New(slog.DiscardHandler)}
	w.gw = gwpostgres.New(env.DB, gwpostgres.Thresholds{DegradedAfter: time.Hour, OfflineAfter: 2 * time.Hour})
	w.store = sesspg.New(env.DB)
	w.svc = sessions.NewService(w.store, catalog.NewService(catpostgres.New(env.DB), nil, w.logger))
	w.ctrl = sessmod.NewController(w.store, w.gw, sessions.NewHub(), sessmod.Config{ProgressTimeout: time.Minute}, w.logger)
	w.loop = w.newLoop(cfg)
	spec := catalog.Spec{DisplayName: "Desk", Image: "example.org/desk:1",
		Resources: catalog.Resources{Requests: catalog.ResourceList{CPU: "1", Memory: "1Gi"}, Limits: catalog.ResourceList{CPU: "4", Memory: "8Gi"}},
		Ports:     []catalog.Port{{Name: "vnc", Port: 5900, Stream: catalog.StreamRFB}}, Home: &catalog.Home{MountPath: "/home/u", Size: "1Gi"}}
	spec.Normalize()
	if _, err := catpostgres.New(env.DB).Create(w.sys, catalog.ScopeTenant, "desk", spec, true); err != nil {
		t.Fatal(err)
	}
	many := int64(1000)
	if err := w.store.SetSettings(w.sys, sessions.Settings{User: sessions.Quota{MaxSessions: &many}}, "test"); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *world) newLoop(cfg module.Config) *module.Loop {
	return module.NewLoop(w.env.DB, postgres.New(w.env.DB, gateway.NewService(w.gw, nil)), cfg, w.logger)
}

func (w *world) user(name string) context.Context {
	return authtest.Context(context.Background(), auth.Principal{Kind: auth.KindUser, Tenant: w.tid, Subject: name, Role: auth.RoleMember})
}

func (w *world) create(ctx context.Context, cpu string) sessions.Session {
	w.t.Helper()
	s, _, err := w.svc.Create(ctx, sessions.NewSession{Template: "desk", Resources: &sessions.ResourceOverride{CPU: cpu}}, "")
	if err != nil {
		w.t.Fatal(err)
	}
	return s
}

func (w *world) pass() postgres.Result {
	w.t.Helper()
	res, err := w.loop.PassTenant(context.Background(), w.tid)
	if err != nil {
		w.t.Fatal(err)
	}
	return res
}

func (w *world) get(id sessions.ID) sessions.Session {
	w.t.Helper()
	s, err := w.store.Get(w.sys, id, sessions.Scope{})
	if err != nil {
		w.t.Fatal(err)
	}
	return s
}

// agent is an enrolled agent, its tunnel played through the gateway's store.
type agent struct {
	w     *world
	id    gateway.AgentID
	owner gateway.Owner
	cap   gateway.Capacity
}

func (w *world) agent(name string, cpuMillis int64, tags ...string) *agent {
	w.t.Helper()
	a := &agent{w: w, id: gateway.NewAgentID(), cap: gateway.Capacity{CPUAllocatableMillis: cpuMillis, MemoryAllocatableBytes: 64 << 30}}
	if err := w.gw.CreateAgent(w.sys, gateway.Agent{ID: a.id, Name: name, Tags: tags}, "token"); err != nil {
		w.t.Fatal(err)
	}
	a.online()
	return a
}

func (a *agent) online() {
	a.w.t.Helper()
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	a.owner = gateway.Owner{Gateway: "gw-test", Conn: hex.EncodeToString(b)}
	if err := a.w.gw.Claim(a.w.sys, a.id, a.owner); err != nil {
		a.w.t.Fatal(err)
	}
	if err := a.w.gw.RecordHello(a.w.sys, a.id, a.owner, gateway.Hello{Version: "test", Capacity: a.cap}); err != nil {
		a.w.t.Fatal(err)
	}
}

func (a *agent) offline() {
	a.w.t.Helper()
	if err := a.w.gw.Release(a.w.sys, a.id, a.owner); err != nil {
		a.w.t.Fatal(err)
	}
}

// assignment returns what the gateway would deliver to the agent for session id.
func (a *agent) assignment(id sessions.ID) gateway.Assignment {
	a.w.t.Helper()
	as, err := a.w.gw.Assignment(a.w.sys, gateway.SessionID(id))
	if err != nil {
		a.w.t.Fatal(err)
	}
	if as.AgentID != a.id {
		a.w.t.Fatalf("session %s is assigned to %s, not %s", id, as.AgentID, a.id)
	}
	return as
}

// report plays the agent reporting session id in phase at its current generation, then
// folds it as the sessions service's listener would.
func (a *agent) report(id sessions.ID, phase wire.Phase, endpoint bool) sessions.Session {
	a.w.t.Helper()
	as := a.assignment(id)
	st := wire.SessionStatus{SessionID: wire.SessionID(id), Phase: phase, ObservedGeneration: as.Generation, ObservedAt: time.Now()}
	if endpoint {
		st.Endpoint = &wire.Endpoint{Host: string(id) + ".svc", Port: 5900, Protocol: "rfb"}
	}
	if refused, err := a.w.gw.ReportStatus(a.w.sys, a.id, a.owner, []wire.SessionStatus{st}); err != nil || len(refused) > 0 {
		a.w.t.Fatalf("report: %v %v", refused, err)
	}
	if err := a.w.ctrl.Fold(a.w.sys, id); err != nil {
		a.w.t.Fatal(err)
	}
	return a.w.get(id)
}

func expectPhase(t *testing.T, s sessions.Session, phase sessions.Phase, reason string) {
	t.Helper()
	if s.Phase != phase || (reason != "*" && s.Reason != reason) {
		t.Fatalf("session %s is %s/%s (%s), want %s/%s", s.ID, s.Phase, s.Reason, s.Message, phase, reason)
	}
}

func TestLifecycleOnAnAgent(t *testing.T) {
	w := newWorld(t, module.Config{})
	a := w.agent("alpha", 8000)
	alice := w.user("alice")
	s := w.create(alice, "1")
	w.pass()
	s = w.get(s.ID)
	expectPhase(t, s, sessions.PhaseStarting, sessions.ReasonPlaced)
	if s.AgentID != string(a.id) {
		t.Fatalf("placed on %q", s.AgentID)
	}
	if as := a.assignment(s.ID); as.Desired != wire.DesiredRunning || as.Generation != 1 {
		t.Fatalf("assignment %+v", as)
	}
	// Running needs the endpoint: a running report without one is not trusted.
	expectPhase(t, a.report(s.ID, wire.PhaseStarting, false), sessions.PhaseStarting, "")
	expectPhase(t, a.report(s.ID, wire.PhaseRunning, false), sessions.PhaseStarting, sessions.ReasonEndpointNotReady)
	s = a.report(s.ID, wire.PhaseRunning, true)
	expectPhase(t, s, sessions.PhaseRunning, "")
	if s.Endpoint == nil || s.StartedAt == nil {
		t.Fatalf("running without endpoint or start: %+v", s)
	}

	// Hibernate: the agent is told, and the session is Hibernated when it says so.
	b := w.agent("beta", 8000) // emptier, but the wake must go home
	if _, err := w.svc.Hibernate(alice, s.ID); err != nil {
		t.Fatal(err)
	}
	expectPhase(t, w.get(s.ID), sessions.PhaseStopping, sessions.ReasonHibernating)
	w.pass()
	if as := a.assignment(s.ID); as.Desired != wire.DesiredHibernated {
		t.Fatalf("assignment %+v", as)
	}
	expectPhase(t, a.report(s.ID, wire.PhaseHibernated, false), sessions.PhaseHibernated, "")

	// Wake goes back to the agent with the home volume.
	if _, err := w.svc.Wake(alice, s.ID); err != nil {
		t.Fatal(err)
	}
	w.pass()
	s = w.get(s.ID)
	expectPhase(t, s, sessions.PhaseStarting, sessions.ReasonPlaced)
	if s.AgentID != string(a.id) {
		t.Fatalf("woke on %s, not the home agent %s (beta is %s)", s.AgentID, a.id, b.id)
	}
	expectPhase(t, a.report(s.ID, wire.PhaseRunning, true), sessions.PhaseRunning, "")

	// Stop, then delete.
	if _, err := w.svc.Stop(alice, s.ID); err != nil {
		t.Fatal(err)
	}
	w.pass()
	if as := a.assignment(s.ID); as.Desired != wire.DesiredStopped {
		t.Fatalf("assignment %+v", as)
	}
	expectPhase(t, a.report(s.ID, wire.PhaseStopped, false), sessions.PhaseStopped, "*")
	if err := w.svc.Delete(alice, s.ID); err != nil {
		t.Fatal(err)
	}
	w.pass()
	if as := a.assignment(s.ID); as.Desired != wire.DesiredDeleted {
		t.Fatalf("assignment after delete %+v", as)
	}
	ev, err := w.store.Events(w.sys, s.ID, sessions.Scope{})
	if err == nil {
		t.Fatalf("a deleted session's events are still served: %v", ev)
	}
}

func TestNoFitWaitsInSchedulingUntilCapacityArrives(t *testing.T) {
	w := newWorld(t, module.Config{})
	w.agent("small", 1500)
	u := w.user("u")
	s1, s2 := w.create(u, "1"), w.create(u, "1")
	w.pass()
	expectPhase(t, w.get(s1.ID), sessions.PhaseStarting, sessions.ReasonPlaced)
	got := w.get(s2.ID)
	expectPhase(t, got, sessions.PhaseScheduling, sessions.ReasonNoAgentFits)
	if got.Message != "no agent fits (1 agents: 1 insufficient cpu)" {
		t.Fatalf("message %q", got.Message)
	}
	w.pass() // retrying changes nothing and adds no event
	big := w.agent("big", 4000)
	w.pass()
	got = w.get(s2.ID)
	expectPhase(t, got, sessions.PhaseStarting, sessions.ReasonPlaced)
	if got.AgentID != string(big.id) {
		t.Fatalf("placed on %s", got.AgentID)
	}
	ev, _ := w.store.Events(w.sys, s2.ID, sessions.Scope{})
	n := 0
	for _, e := range ev {
		if e.Reason == sessions.ReasonNoAgentFits {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d NoAgentFits events: %+v", n, ev)
	}
}

func TestTwoSchedulersNeverPlaceASessionTwice(t *testing.T) {
	w := newWorld(t, module.Config{})
	agents := []*agent{w.agent("a", 20000), w.agent("b", 20000), w.agent("c", 20000)}
	const n = 120
	ids := make([]sessions.ID, n)
	for i := range ids {
		ids[i] = w.create(w.user("u"+string(rune('a'+i%5))), "500m").ID
	}
	// Two replicas (each its own loop), each with its own batch, run until the work is done.
	loops := []*module.Loop{w.newLoop(module.Config{Replica: "one"}), w.newLoop(module.Config{Replica: "two"})}
	var wg sync.WaitGroup
	var mu sync.Mutex
	placedBy := map[string]int{}
	for _, l := range loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				res, err := l.PassTenant(context.Background(), w.tid)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				placedBy[l.Options().Actor] += res.Placed
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	total := 0
	for _, v := range placedBy {
		total += v
	}
	if total != n {
		t.Fatalf("placements %v, want %d in all", placedBy, n)
	}
	perAgent := map[string]int64{}
	for _, id := range ids {
		s := w.get(id)
		if s.Phase != sessions.PhaseStarting || s.AgentID == "" {
			t.Fatalf("session %+v", s)
		}
		perAgent[s.AgentID] += s.CPUMillis
		ev, err := w.store.Events(w.sys, id, sessions.Scope{})
		if err != nil {
			t.Fatal(err)
		}
		placed := 0
		for _, e := range ev {
			if e.Kind == sessions.EventPlaced {
				placed++
			}
		}
		as, err := w.gw.Assignment(w.sys, gateway.SessionID(id))
		if err != nil || placed != 1 || as.Generation != 1 {
			t.Fatalf("session %s placed %d times, assignment generation %d (%v)", id, placed, as.Generation, err)
		}
	}
	for _, a := range agents {
		if perAgent[string(a.id)] > a.cap.CPUAllocatableMillis {
			t.Fatalf("agent %s overcommitted: %d", a.id, perAgent[string(a.id)])
		}
	}
	// Spread: 120 × 500m over three equal agents is 20 each.
	for _, a := range agents {
		if perAgent[string(a.id)] != 20000 {
			t.Fatalf("spread placed %v", perAgent)
		}
	}
}

func TestAgentLostAndReturning(t *testing.T) {
	w := newWorld(t, module.Config{Grace: time.Nanosecond})
	a := w.agent("alpha", 4000)
	u := w.user("u")
	running := w.create(u, "1")
	starting := w.create(u, "1")
	w.pass()
	b := w.agent("beta", 4000)
	expectPhase(t, a.report(running.ID, wire.PhaseRunning, true), sessions.PhaseRunning, "")
	if got := w.get(starting.ID); got.AgentID != string(a.id) {
		t.Fatalf("starting session on %s", got.AgentID)
	}

	a.offline()
	res := w.pass()
	if res.Lost != 2 {
		t.Fatalf("pass %+v", res)
	}
	got := w.get(running.ID)
	expectPhase(t, got, sessions.PhaseRunning, sessions.ReasonAgentLost)
	if !got.AgentLost || got.AgentID != string(a.id) {
		t.Fatalf("lost session %+v", got)
	}
	// After the grace period the session that never ran moves; the running one waits.
	res = w.pass()
	if res.Rescheduled != 1 {
		t.Fatalf("pass %+v", res)
	}
	w.pass()
	moved := w.get(starting.ID)
	expectPhase(t, moved, sessions.PhaseStarting, sessions.ReasonPlaced)
	if moved.AgentID != string(b.id) {
		t.Fatalf("rescheduled onto %s, want %s", moved.AgentID, b.id)
	}
	b.assignment(starting.ID)
	// The agent it left is told to remove it, whenever it comes back: a retirement at a
	// generation above what it applied, in its pending work and its full set.
	pending, err := w.gw.Pending(w.sys, a.id)
	if err != nil {
		t.Fatal(err)
	}
	var retired bool
	for _, p := range pending {
		if p.SessionID == gateway.SessionID(starting.ID) {
			retired = p.Desired == wire.DesiredDeleted
		}
	}
	if !retired {
		t.Fatalf("the agent the session left has no retirement for it: %+v", pending)
	}
	expectPhase(t, w.get(running.ID), sessions.PhaseRunning, sessions.ReasonAgentLost)

	// The agent returns: the mark goes, and its next report is folded as usual.
	a.online()
	if res := w.pass(); res.Returned != 1 {
		t.Fatalf("pass %+v", res)
	}
	got = w.get(running.ID)
	if got.AgentLost || got.Reason != sessions.ReasonAgentReturned {
		t.Fatalf("returned session %+v", got)
	}
	got = a.report(running.ID, wire.PhaseRunning, true)
	if got.Phase != sessions.PhaseRunning || got.AgentLost {
		t.Fatalf("after report %+v", got)
	}
	ev, _ := w.store.Events(w.sys, running.ID, sessions.Scope{})
	var reasons []string
	for _, e := range ev {
		reasons = append(reasons, e.Reason)
	}
	if !containsAll(reasons, sessions.ReasonAgentLost, sessions.ReasonAgentReturned) {
		t.Fatalf("events %v", reasons)
	}
}

func containsAll(have []string, want ...string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			found = found || h == w
		}
		if !found {
			return false
		}
	}
	return true
}

func TestTimers(t *testing.T) {
	w := newWorld(t, module.Config{})
	a := w.agent("alpha", 16000)
	u := w.user("u")
	idle, busy, old := w.create(u, "1"), w.create(u, "1"), w.create(u, "1")
	w.pass()
	for _, s := range []sessions.Session{idle, busy, old} {
		expectPhase(t, a.report(s.ID, wire.PhaseRunning, true), sessions.PhaseRunning, "")
	}
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := w.env.Pool.Exec(context.Background(), sql, args...); err != nil {
			t.Fatal(err)
		}
	}
	schema := w.tid.Schema()
	// Short idle timeouts: idle and busy sessions have been quiet for two minutes with a
	// one-minute timeout, but busy sends a heartbeat.
	exec(`UPDATE `+schema+`.sessions SET idle_timeout_seconds = 60, last_activity = now() - interval '2 minutes' WHERE id = ANY ($1)`,
		[]string{string(idle.ID), string(busy.ID)})
	if err := w.svc.Heartbeat(u, busy.ID); err != nil {
		t.Fatal(err)
	}
	exec(`UPDATE `+schema+`.sessions SET created_at = now() - interval '13 hours' WHERE id = $1`, string(old.ID))
	if err := w.ctrl.TickTenant(context.Background(), w.tid); err != nil {
		t.Fatal(err)
	}
	got := w.get(idle.ID)
	if got.Desired != sessions.DesiredHibernated || got.Reason != sessions.ReasonIdleTimeout {
		t.Fatalf("idle session %+v", got)
	}
	if got := w.get(busy.ID); got.Desired != sessions.DesiredRunning {
		t.Fatalf("busy session %+v", got)
	}
	if got := w.get(old.ID); got.Desired != sessions.DesiredStopped || got.Reason != sessions.ReasonMaxDuration {
		t.Fatalf("old session %+v", got)
	}
	w.pass()
	expectPhase(t, a.report(idle.ID, wire.PhaseHibernated, false), sessions.PhaseHibernated, "")
	ev, _ := w.store.Events(w.sys, idle.ID, sessions.Scope{})
	last := ev[len(ev)-2] // the hibernation, before the agent's confirmation
	if last.Reason != sessions.ReasonIdleTimeout || last.Actor != sessmod.Actor {
		t.Fatalf("event %+v", last)
	}
	// Wake keeps the home: same agent.
	if _, err := w.svc.Wake(u, idle.ID); err != nil {
		t.Fatal(err)
	}
	w.pass()
	if got := w.get(idle.ID); got.AgentID != string(a.id) {
		t.Fatalf("woke on %s", got.AgentID)
	}
}

func TestNoSessionHangsForever(t *testing.T) {
	w := newWorld(t, module.Config{})
	u := w.user("u")
	s := w.create(u, "1")
	w.pass()
	expectPhase(t, w.get(s.ID), sessions.PhaseScheduling, sessions.ReasonNoAgentFits)
	if _, err := w.env.Pool.Exec(context.Background(), `UPDATE `+w.tid.Schema()+`.sessions SET phase_since = now() - interval '2 minutes'`); err != nil {
		t.Fatal(err)
	}
	if err := w.ctrl.TickTenant(context.Background(), w.tid); err != nil {
		t.Fatal(err)
	}
	got := w.get(s.ID)
	expectPhase(t, got, sessions.PhaseFailed, sessions.ReasonProgressDeadline)
	if got.Desired != sessions.DesiredStopped {
		t.Fatalf("failed session still wants %s", got.Desired)
	}
	// Its quota is back: the user can start another.
	var used int64
	if err := w.env.Pool.QueryRow(context.Background(), `SELECT sessions FROM `+w.tid.Schema()+`.session_usage WHERE subject = 'u'`).Scan(&used); err != nil || used != 0 {
		t.Fatalf("usage %d %v", used, err)
	}
	if _, err := w.svc.Wake(u, s.ID); !apperr.IsCode(err, apperr.Conflict) {
		t.Fatalf("waking a failed session: %v", err)
	}
	_ = scheduler.Spread
}

// An agent change that the gateway's store announces on gateway.AgentsChannel places a
// waiting session at once: the loop's timer is ten minutes away and no other notice is
// pending (a pass announces no work), so only the announcement can have run the pass that
// places it. Both changes that make room are played through the gateway's store as its
// tunnel makes them: a heartbeat reporting more capacity, and a new agent's hello.
func TestAgentAnnouncementPlacesAtOnce(t *testing.T) {
	w := newWorld(t, module.Config{Interval: 10 * time.Minute})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.loop.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
	// The listener has no readiness signal; its connection's last statement is its
	// second LISTEN once it listens to both channels.
	poll.Until(t, time.Minute, "the loop listens", func() bool {
		var n int
		if err := w.env.Pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND query = $1`, "LISTEN "+pgx.Identifier{gateway.AgentsChannel}.Sanitize()).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 1
	})
	phase := func(id sessions.ID, p sessions.Phase, reason string) func() bool {
		return func() bool { s := w.get(id); return s.Phase == p && s.Reason == reason }
	}

	small := w.agent("small", 500)
	u := w.user("u")
	s1 := w.create(u, "1")
	// The create's own announcement (sessions.WorkChannel) runs a pass, which finds no
	// room; a pass announces nothing more.
	poll.Until(t, time.Minute, "the session waits for room", phase(s1.ID, sessions.PhaseScheduling, sessions.ReasonNoAgentFits))
	small.cap.CPUAllocatableMillis = 2000
	if lost, err := w.gw.RecordHeartbeats(w.sys, []gateway.Beat{{Agent: small.id, Conn: small.owner.Conn, Capacity: &small.cap}}); err != nil || len(lost) > 0 {
		t.Fatalf("heartbeat: %v %v", lost, err)
	}
	poll.Until(t, time.Minute, "the session is placed after the capacity change", phase(s1.ID, sessions.PhaseStarting, sessions.ReasonPlaced))
	if got := w.get(s1.ID); got.AgentID != string(small.id) {
		t.Fatalf("placed on %s, want %s", got.AgentID, small.id)
	}

	s2 := w.create(u, "2") // 1500m are left on small
	poll.Until(t, time.Minute, "the second session waits for room", phase(s2.ID, sessions.PhaseScheduling, sessions.ReasonNoAgentFits))
	big := w.agent("big", 4000) // enrolled, claimed and its hello recorded
	poll.Until(t, time.Minute, "the second session is placed on the new agent", phase(s2.ID, sessions.PhaseStarting, sessions.ReasonPlaced))
	if got := w.get(s2.ID); got.AgentID != string(big.id) {
		t.Fatalf("placed on %s, want %s", got.AgentID, big.id)
	}
}
