package kubernetes_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"streamspace.dev/agent/backend/kubernetes"
	"streamspace.dev/agent/reconcile"
	"streamspace.dev/libs/poll"
	"streamspace.dev/libs/wire"
)

func TestDriftIsRepaired(t *testing.T) {
	needCluster(t)
	t.Parallel()
	c := adminClient(t)
	ns := newNamespace(t, c)
	b := newBackend(t, ns, newStreamListener(t), options{})
	ctx := context.Background()
	id := newSessionID()
	name := "ss-" + dashed(id)
	applyOK(t, b, assignment(t, id, 1, wire.DesiredRunning))
	waitPhase(t, b, id, wire.PhaseRunning, "")

	// Someone scales the session to zero behind the agent's back.
	if _, err := c.AppsV1().Deployments(ns).UpdateScale(ctx, name, &autoscalingv1.Scale{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: autoscalingv1.ScaleSpec{Replicas: 0},
	}, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	poll.UntilNil(t, 30*time.Second, "scale repaired", func() error {
		d, err := c.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if *d.Spec.Replicas != 1 {
			return fmt.Errorf("replicas %d", *d.Spec.Replicas)
		}
		return nil
	})
	t.Logf("scale repaired in %v", time.Since(t0).Round(time.Millisecond))
	waitPhase(t, b, id, wire.PhaseRunning, "")

	// Someone deletes the Deployment and the Service.
	old, err := c.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AppsV1().Deployments(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.CoreV1().Services(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	poll.UntilNil(t, 30*time.Second, "deployment and service recreated", func() error {
		d, err := c.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.UID == old.UID {
			return fmt.Errorf("still the old deployment")
		}
		_, err = c.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
		return err
	})
	t.Logf("deletion repaired in %v", time.Since(t0).Round(time.Millisecond))
	waitPhase(t, b, id, wire.PhaseRunning, "")

	// Someone deletes the credentials: the periodic pass recreates them.
	if err := c.CoreV1().Secrets(ns).Delete(ctx, name+"-creds", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll.UntilNil(t, 30*time.Second, "secret recreated", func() error {
		_, err := c.CoreV1().Secrets(ns).Get(ctx, name+"-creds", metav1.GetOptions{})
		return err
	})

	// A hibernated session is kept at zero: scaling it up is drift too.
	applyOK(t, b, wire.Assignment{SessionID: id, TenantID: testTenant, Generation: 2, Desired: wire.DesiredHibernated})
	waitPhase(t, b, id, wire.PhaseHibernated, "")
	if _, err := c.AppsV1().Deployments(ns).UpdateScale(ctx, name, &autoscalingv1.Scale{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: autoscalingv1.ScaleSpec{Replicas: 1},
	}, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll.UntilNil(t, 30*time.Second, "hibernated again", func() error {
		d, err := c.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if *d.Spec.Replicas != 0 {
			return fmt.Errorf("replicas %d", *d.Spec.Replicas)
		}
		return nil
	})
	waitPhase(t, b, id, wire.PhaseHibernated, "")
}

// TestRestartedAgentRepairs is the repair step of the end-to-end scenario at the backend
// level: the agent is down while its Deployment is deleted, and a new agent process
// (with empty memory) repairs it from the root alone.
func TestRestartedAgentRepairs(t *testing.T) {
	needCluster(t)
	t.Parallel()
	c := adminClient(t)
	ns := newNamespace(t, c)
	ln := newStreamListener(t)
	ctx := context.Background()
	id := newSessionID()
	name := "ss-" + dashed(id)
	mutate := func(cfg *kubernetes.Config) { cfg.Resync = time.Hour } // only the reconnect may repair
	b1 := newBackend(t, ns, ln, options{mutate: mutate})
	applyOK(t, b1, assignment(t, id, 7, wire.DesiredRunning))
	waitPhase(t, b1, id, wire.PhaseRunning, "")
	b1.Close()

	if err := c.AppsV1().Deployments(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	b2 := newBackend(t, ns, ln, options{mutate: mutate})
	// The reconcile loop observes after connecting; the gateway's checksum matches, so
	// nothing is pushed and only the backend can notice the drift.
	obs, err := b2.Observe(ctx)
	if err != nil || len(obs) != 1 || obs[0].SessionID != id || obs[0].ObservedGeneration != 7 {
		t.Fatalf("observe after restart: %+v %v", obs, err)
	}
	poll.UntilNil(t, 30*time.Second, "deployment recreated after restart", func() error {
		_, err := c.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		return err
	})
	waitPhase(t, b2, id, wire.PhaseRunning, "")
}

func TestOrphansRemovedAndForeignObjectsUntouched(t *testing.T) {
	needCluster(t)
	t.Parallel()
	c := adminClient(t)
	ns := newNamespace(t, c)
	b := newBackend(t, ns, newStreamListener(t), options{})
	ctx := context.Background()
	agent := "agent-" + ns

	keep, orphan := newSessionID(), newSessionID()
	applyOK(t, b, assignment(t, keep, 1, wire.DesiredRunning), assignment(t, orphan, 1, wire.DesiredRunning))
	waitPhase(t, b, keep, wire.PhaseRunning, "")
	waitPhase(t, b, orphan, wire.PhaseRunning, "")

	// Objects the agent must never touch: no labels; the managed-by label of another
	// agent; our labels' look-alike with another managed-by.
	foreign := []map[string]string{
		nil,
		{kubernetes.ManagedByLabel: kubernetes.ManagedByValue, kubernetes.AgentLabel: "someone-else", kubernetes.SessionLabel: "ses_x"},
		{kubernetes.ManagedByLabel: "helm", kubernetes.AgentLabel: agent, kubernetes.SessionLabel: "ses_y"},
	}
	for i, l := range foreign {
		name := fmt.Sprintf("foreign-%d", i)
		if _, err := c.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.AppsV1().Deployments(ns).Create(ctx, foreignDeployment(name, l), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Left-behind children of a session that no longer exists: our labels, no root.
	ghost := newSessionID()
	ghostLabels := map[string]string{kubernetes.ManagedByLabel: kubernetes.ManagedByValue, kubernetes.AgentLabel: agent,
		kubernetes.SessionLabel: string(ghost)}
	if _, err := c.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "ss-" + dashed(ghost), Labels: ghostLabels},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 5901}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AppsV1().Deployments(ns).Create(ctx, foreignDeployment("ss-"+dashed(ghost), ghostLabels), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The gateway's full set names only keep: the reconcile loop removes the orphan
	// session, and the backend's own pass removes the ghost's children.
	rec := reconcile.New(b, nil)
	rctx, stop := context.WithCancel(ctx)
	defer func() { stop(); rec.Wait() }()
	if err := rec.Start(rctx); err != nil {
		t.Fatal(err)
	}
	set := []wire.Assignment{assignment(t, keep, 1, wire.DesiredRunning)}
	if _, err := rec.Push(ctx, &wire.DesiredState{Full: true, Checksum: wire.Checksum(set), Assignments: set}); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, b, orphan, wire.PhaseDeleted, "")
	if err := b.Resync(ctx); err != nil {
		t.Fatal(err)
	}
	poll.UntilNil(t, 30*time.Second, "ghost children deleted", func() error {
		if _, err := c.CoreV1().Services(ns).Get(ctx, "ss-"+dashed(ghost), metav1.GetOptions{}); !isNotFound(err) {
			return fmt.Errorf("service: %v", err)
		}
		if _, err := c.AppsV1().Deployments(ns).Get(ctx, "ss-"+dashed(ghost), metav1.GetOptions{}); !isNotFound(err) {
			return fmt.Errorf("deployment: %v", err)
		}
		if _, err := c.AppsV1().Deployments(ns).Get(ctx, "ss-"+dashed(orphan), metav1.GetOptions{}); !isNotFound(err) {
			return fmt.Errorf("orphan deployment: %v", err)
		}
		return nil
	})
	for i := range foreign {
		name := fmt.Sprintf("foreign-%d", i)
		if _, err := c.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{}); err != nil {
			t.Errorf("configmap %s: %v", name, err)
		}
		if _, err := c.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{}); err != nil {
			t.Errorf("service %s: %v", name, err)
		}
		d, err := c.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil || *d.Spec.Replicas != 3 {
			t.Errorf("deployment %s: %v", name, err)
		}
	}
	if st, _ := b.Status(keep); st.Phase != wire.PhaseRunning {
		t.Errorf("kept session: %+v", st)
	}
	obs, err := b.Observe(ctx)
	if err != nil || len(obs) != 1 || obs[0].SessionID != keep {
		t.Errorf("observe: %+v %v", obs, err)
	}
}

func foreignDeployment(name string, l map[string]string) *appsv1.Deployment {
	sel := map[string]string{"app": name}
	pl := map[string]string{"app": name}
	for k, v := range l {
		pl[k] = v
	}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l},
		Spec: appsv1.DeploymentSpec{
			Replicas: new(int32(3)),
			Selector: &metav1.LabelSelector{MatchLabels: sel},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: pl},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "nginx"}}},
			},
		},
	}
}

// slowDeletes delays every DELETE of a ConfigMap while on, as a loaded apiserver does.
type slowDeletes struct {
	rt  http.RoundTripper
	on  *atomic.Bool
	lag time.Duration
}

func (s slowDeletes) RoundTrip(r *http.Request) (*http.Response, error) {
	if s.on.Load() && r.Method == http.MethodDelete && strings.Contains(r.URL.Path, "/configmaps/") {
		time.Sleep(s.lag)
	}
	return s.rt.RoundTrip(r)
}

// TestRemoveIsNotUndoneByRepair: while Remove deletes a session's objects, the caches
// see its Deployment gone before its root, which looks like drift. The repair that
// queues must not recreate the session once Remove has finished; under a burst of
// deletes (a slow apiserver) it used to, and the session's objects stayed for good.
func TestRemoveIsNotUndoneByRepair(t *testing.T) {
	needCluster(t)
	t.Parallel()
	c := adminClient(t)
	ns := newNamespace(t, c)
	var slow atomic.Bool
	rc := rest.CopyConfig(admin)
	rc.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return slowDeletes{rt: rt, on: &slow, lag: 2 * time.Second}
	})
	// The clock runs ahead once the session is up, so that its apply is long settled
	// and a missing object counts as drift at once, as for a session created minutes ago.
	var skew atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	b := newBackend(t, ns, newStreamListener(t), options{cfg: rc, mutate: func(cfg *kubernetes.Config) { cfg.Now = now }})
	ctx := context.Background()
	id := newSessionID()
	name := "ss-" + dashed(id)
	applyOK(t, b, assignment(t, id, 1, wire.DesiredRunning))
	waitPhase(t, b, id, wire.PhaseRunning, "")
	skew.Store(int64(time.Hour))

	slow.Store(true)
	if err := b.Remove(ctx, id); err != nil {
		t.Fatal(err)
	}
	slow.Store(false)
	// The repair is rate limited (200 ms, then doubling) and waits for Remove's lock:
	// give it time to act, then the session must still be gone.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := c.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{}); !isNotFound(err) {
			t.Fatalf("the root of the removed session is back (err %v)", err)
		}
		if _, err := c.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{}); !isNotFound(err) {
			t.Fatalf("the Deployment of the removed session is back (err %v)", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
