package site

import (
	"context"
	"fmt"
	"testing"
	"time"

	"streamspace.dev/e2e/harness"
	"streamspace.dev/e2e/kube"
	"streamspace.dev/e2e/netns"
)

// Timeouts of the steps. Generous: CI runs this beside other packages' tests on two
// cores; a healthy run takes a fraction of them.
const (
	runningTimeout = 60 * time.Second
	phaseTimeout   = 45 * time.Second
)

// TestCustomerSite is issue 7's end-to-end test. See the package documentation for the
// layout. Each step depends on the ones before, so the first failure ends the test:
// later failures would only be echoes of it.
func TestCustomerSite(t *testing.T) {
	began := time.Now()
	s := up(t, kube.Options{})
	// The API client and the helpers fail the step being run, not its parent.
	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, func(st *testing.T) {
			s.api.T = st
			defer func() { s.api.T = t }()
			f(st)
		}) {
			t.FailNow()
		}
	}
	// Processes started inside a step must outlive it: they are the parent's.
	parent := t
	var live *liveStream

	step("1 sign up a tenant", func(t *testing.T) {
		s.signup(t)
		live = s.watch(parent)
	})

	step("2 enroll the agent with a token from the API", func(t *testing.T) {
		s.enroll(t, parent)
		if s.agent.Count(`"kubernetes backend started"`) == 0 {
			t.Fatal("the agent is online but never started its Kubernetes backend")
		}
	})

	var first sessionView
	var home object
	step("3 create a session from a catalog template: Running through the API and the live stream", func(t *testing.T) {
		since := live.mark()
		dials := s.dials.Load()
		first = s.create(t)
		live.wait(t, since, "session", first.ID, "Running", runningTimeout)
		v := s.waitPhase(t, first.ID, "Running", phaseTimeout)
		if v.AgentID != s.agentID || v.Endpoint == nil || v.Endpoint.Port != streamPort {
			t.Fatalf("Running as %+v: want agent %s and an endpoint on port %d", v, s.agentID, streamPort)
		}
		dep := s.requireDeployment(t, first.ID, 1)
		pod, err := s.one(t, "Pod", first.ID)
		if err != nil || pod.Status.PodIP == "" {
			t.Fatalf("the session's Pod: %v (%+v)", err, pod.Status)
		}
		if s.dials.Load() == dials {
			t.Fatalf("Running, but nothing dialled the stream endpoint (Pod IP %s, port %d)", pod.Status.PodIP, streamPort)
		}
		for _, k := range []string{"Service", "Secret", "ConfigMap"} {
			if _, err := s.one(t, k, first.ID); err != nil {
				t.Fatal(err)
			}
		}
		home = s.requireHome(t, first.ID, "")
		t.Logf("Deployment %s, Pod %s at %s, home %s bound to %s", dep.Metadata.Name, pod.Metadata.Name,
			pod.Status.PodIP, home.Metadata.Name, home.Spec.VolumeName)
	})

	step("4 hibernate: the Deployment is at 0 and the home volume is kept", func(t *testing.T) {
		s.transition(t, live, first.ID, "hibernate", "Hibernated", 0, home.Metadata.UID)
	})

	step("5 wake: Running again, on the same home volume", func(t *testing.T) {
		if v := s.transition(t, live, first.ID, "wake", "Running", 1, home.Metadata.UID); v.AgentID != s.agentID {
			t.Fatalf("woke on agent %s, want %s", v.AgentID, s.agentID)
		}
	})

	step("6 stop: the Deployment is at 0 and the home volume is kept", func(t *testing.T) {
		s.transition(t, live, first.ID, "stop", "Stopped", 0, home.Metadata.UID)
	})

	step("7 delete: everything is gone except the retained home volume", func(t *testing.T) {
		// The customer's admin marks this home to be kept; the agent's policy (the
		// default, --retain-homes=false) would delete it otherwise (step 9).
		if err := s.kube.MergePatch(context.Background(), kinds["PersistentVolumeClaim"]+"/"+home.Metadata.Name,
			map[string]any{"metadata": map[string]any{"annotations": map[string]string{"streamspace.dev/retain": "true"}}}, nil); err != nil {
			t.Fatal(err)
		}
		since := live.mark()
		s.api.Call("DELETE", "/api/v1/sessions/"+first.ID, s.admin, nil, nil, 204)
		s.api.Call("GET", "/api/v1/sessions/"+first.ID, s.admin, nil, nil, 404)
		live.wait(t, since, "deleted", first.ID, "", phaseTimeout)
		harness.Eventually(t, phaseTimeout, "the session's objects are gone", func() error {
			return s.absent(t, first.ID, "Deployment", "Pod", "Service", "Secret", "ConfigMap")
		})
		kept := s.requireHome(t, first.ID, home.Metadata.UID)
		if kept.Metadata.Labels["app.kubernetes.io/managed-by"] != "" || kept.Metadata.Labels["streamspace.dev/retained"] != "true" ||
			len(kept.Metadata.OwnerReferences) != 0 {
			t.Fatalf("the retained home %s is still tied to the session: labels %v, owners %v",
				kept.Metadata.Name, kept.Metadata.Labels, kept.Metadata.OwnerReferences)
		}
	})

	var second sessionView
	step("8 repair: a Deployment deleted behind a killed agent's back is recreated", func(t *testing.T) {
		second = s.create(t)
		s.waitPhase(t, second.ID, "Running", runningTimeout)
		before := s.requireDeployment(t, second.ID, 1)
		ups := s.agent.Count(`"tunnel up"`)

		s.agent.Kill()
		ctx := context.Background()
		if err := s.kube.Do(ctx, "DELETE", kinds["Deployment"]+"/"+before.Metadata.Name, nil, nil); err != nil {
			t.Fatal(err)
		}
		harness.Eventually(t, phaseTimeout, "the Deployment is gone", func() error {
			return s.absent(t, second.ID, "Deployment")
		})
		s.startAgent(parent)
		harness.Eventually(t, runningTimeout, "the restarted agent recreated the Deployment", func() error {
			if s.agent.Exited() {
				t.Fatalf("the restarted agent exited (%v)", s.agent.Err())
			}
			d, err := s.one(t, "Deployment", second.ID)
			if err != nil {
				return err
			}
			if d.Metadata.UID == before.Metadata.UID {
				return fmt.Errorf("still the deleted Deployment %s", d.Metadata.UID)
			}
			if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 || d.Status.ReadyReplicas != 1 {
				return fmt.Errorf("recreated, %v replicas wanted, %d ready", d.Spec.Replicas, d.Status.ReadyReplicas)
			}
			return nil
		})
		if s.agent.Count(`"tunnel up"`) == 0 {
			t.Fatalf("the restarted agent never logged \"tunnel up\" (the first one logged it %d times)", ups)
		}
		s.waitPhase(t, second.ID, "Running", phaseTimeout)
	})

	step("9 delete without retention: the home volume goes too", func(t *testing.T) {
		s.api.Call("DELETE", "/api/v1/sessions/"+second.ID, s.admin, nil, nil, 204)
		harness.Eventually(t, phaseTimeout, "every object of the session is gone", func() error {
			return s.absent(t, second.ID, "Deployment", "Pod", "Service", "Secret", "ConfigMap", "PersistentVolumeClaim")
		})
	})

	t.Run("inbound to the site is still dropped while the tunnel is up", func(t *testing.T) {
		// The tunnel's own conntrack entry must not open the site to anyone else.
		netns.RequireBlocked(t, s.pair.Control, netns.StartListeners(t, s.pair.Site, netns.SiteIP))
	})

	if err := s.agent.Stop(t); err != nil {
		t.Errorf("the agent did not drain cleanly on SIGTERM: %v", err)
	}
	t.Logf("whole test in %v", time.Since(began).Round(time.Millisecond))
}

// transition asks for action on session id through the API, waits for phase on the live
// stream and through the API, then for the Deployment at replicas, and checks that the
// home volume is still the one with uid.
func (s *stack) transition(t *testing.T, live *liveStream, id, action, phase string, replicas int32, uid string) sessionView {
	t.Helper()
	since := live.mark()
	s.api.Call("POST", "/api/v1/sessions/"+id+"/"+action, s.admin, nil, nil, 200)
	live.wait(t, since, "session", id, phase, runningTimeout)
	v := s.waitPhase(t, id, phase, phaseTimeout)
	s.requireDeployment(t, id, replicas)
	s.requireHome(t, id, uid)
	return v
}

// requireDeployment waits until the session's Deployment wants replicas and has them
// all Ready (0: none left), and returns it.
func (s *stack) requireDeployment(t testing.TB, id string, replicas int32) object {
	t.Helper()
	var d object
	harness.Eventually(t, phaseTimeout, fmt.Sprintf("the Deployment of %s at %d", id, replicas), func() error {
		var err error
		if d, err = s.one(t, "Deployment", id); err != nil {
			return err
		}
		if d.Spec.Replicas == nil || *d.Spec.Replicas != replicas || d.Status.ReadyReplicas != replicas || d.Status.Replicas != replicas {
			return fmt.Errorf("spec.replicas %v, status replicas %d ready %d", d.Spec.Replicas, d.Status.Replicas, d.Status.ReadyReplicas)
		}
		if replicas == 0 {
			if pods := s.objects(t, "Pod", id); len(pods) > 0 {
				return fmt.Errorf("Pod %s still there", pods[0].Metadata.Name)
			}
		}
		return nil
	})
	return d
}

// requireHome waits until the session's home claim is Bound and returns it; uid, if
// set, must be the claim's: the same volume, never a new one.
func (s *stack) requireHome(t testing.TB, id, uid string) object {
	t.Helper()
	var c object
	harness.Eventually(t, phaseTimeout, "the home volume of "+id+" Bound", func() error {
		var err error
		if c, err = s.one(t, "PersistentVolumeClaim", id); err != nil {
			return err
		}
		if c.Status.Phase != "Bound" || c.Metadata.DeletionTimestamp != nil {
			return fmt.Errorf("claim %s is %s (deleting: %v)", c.Metadata.Name, c.Status.Phase, c.Metadata.DeletionTimestamp != nil)
		}
		return nil
	})
	if uid != "" && c.Metadata.UID != uid {
		t.Fatalf("the home claim %s is a new one (uid %s, was %s): the session's data is lost", c.Metadata.Name, c.Metadata.UID, uid)
	}
	return c
}
