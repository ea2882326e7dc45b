package kubernetes_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8s "k8s.io/client-go/kubernetes"

	"streamspace.dev/agent/backend/kubernetes"
	"streamspace.dev/libs/poll"
	"streamspace.dev/libs/wire"
)

// watchAll collects every status the backend reports.
type watchAll struct {
	mu  sync.Mutex
	got []wire.SessionStatus
}

func collect(t testing.TB, b *kubernetes.Backend) *watchAll {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch, err := b.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w := &watchAll{}
	go func() {
		for st := range ch {
			w.mu.Lock()
			w.got = append(w.got, st)
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *watchAll) phases(id wire.SessionID) []wire.Phase {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []wire.Phase
	for _, st := range w.got {
		if st.SessionID == id && (len(out) == 0 || out[len(out)-1] != st.Phase) {
			out = append(out, st.Phase)
		}
	}
	return out
}

// sessionObjects checks that every object of a session exists, carries our labels and
// hangs off the root; it returns the root's name.
func sessionObjects(t *testing.T, c k8s.Interface, ns string, id wire.SessionID, agent string) {
	t.Helper()
	ctx := context.Background()
	roots, err := c.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{LabelSelector: kubernetes.SessionLabel + "=" + string(id)})
	if err != nil || len(roots.Items) != 1 {
		t.Fatalf("root of %s: %v %v", id, err, roots)
	}
	root := roots.Items[0]
	if root.Annotations[kubernetes.SessionIDAnnotation] != string(id) {
		t.Errorf("root annotations %v", root.Annotations)
	}
	check := func(kind string, m metav1.ObjectMeta) {
		t.Helper()
		for k, v := range map[string]string{
			kubernetes.ManagedByLabel: kubernetes.ManagedByValue, kubernetes.SessionLabel: string(id),
			kubernetes.TenantLabel: string(testTenant), kubernetes.AgentLabel: agent,
		} {
			if m.Labels[k] != v {
				t.Errorf("%s %s: label %s=%q, want %q", kind, m.Name, k, m.Labels[k], v)
			}
		}
		if kind == "root" {
			return
		}
		if len(m.OwnerReferences) != 1 || m.OwnerReferences[0].UID != root.UID {
			t.Errorf("%s %s: owners %+v, want the root %s", kind, m.Name, m.OwnerReferences, root.UID)
		}
	}
	check("root", root.ObjectMeta)
	sel := metav1.ListOptions{LabelSelector: kubernetes.SessionLabel + "=" + string(id)}
	deps, _ := c.AppsV1().Deployments(ns).List(ctx, sel)
	svcs, _ := c.CoreV1().Services(ns).List(ctx, sel)
	secs, _ := c.CoreV1().Secrets(ns).List(ctx, sel)
	pvcs, _ := c.CoreV1().PersistentVolumeClaims(ns).List(ctx, sel)
	if len(deps.Items) != 1 || len(svcs.Items) != 1 || len(secs.Items) != 1 || len(pvcs.Items) != 1 {
		t.Fatalf("session %s: %d deployments, %d services, %d secrets, %d pvcs; want one each",
			id, len(deps.Items), len(svcs.Items), len(secs.Items), len(pvcs.Items))
	}
	check("deployment", deps.Items[0].ObjectMeta)
	check("service", svcs.Items[0].ObjectMeta)
	check("secret", secs.Items[0].ObjectMeta)
	check("pvc", pvcs.Items[0].ObjectMeta)
	if len(secs.Items[0].Data["vnc-password"]) < 16 {
		t.Errorf("secret holds no password: %v", secs.Items[0].Data)
	}
}

func TestLifecycle(t *testing.T) {
	needCluster(t)
	t.Parallel()
	c := adminClient(t)
	ns := newNamespace(t, c)
	ln := newStreamListener(t)
	b := newBackend(t, ns, ln, options{})
	w := collect(t, b)
	ctx := context.Background()
	agent := "agent-" + ns

	// Two sessions of the same template for the same user: v1 named both
	// ss-{user}-{template}.
	s1, s2 := newSessionID(), newSessionID()
	a1, a2 := assignment(t, s1, 1, wire.DesiredRunning), assignment(t, s2, 1, wire.DesiredRunning)
	applyOK(t, b, a1, a2)
	applyOK(t, b, a1, a2) // idempotent
	for _, id := range []wire.SessionID{s1, s2} {
		st := waitPhase(t, b, id, wire.PhaseRunning, "")
		if st.Endpoint == nil || st.Endpoint.Port != 5901 || st.Endpoint.Protocol != "rfb" || st.ObservedGeneration != 1 {
			t.Errorf("running status %+v endpoint %+v", st, st.Endpoint)
		}
		sessionObjects(t, c, ns, id, agent)
	}
	if ln.accepted.Load() < 2 {
		t.Errorf("the endpoint probe reached the listener %d times, want at least 2", ln.accepted.Load())
	}
	deps, _ := c.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{})
	if len(deps.Items) != 2 || deps.Items[0].Name == deps.Items[1].Name {
		t.Fatalf("deployments %v", deps.Items)
	}
	pw := func(id wire.SessionID) string {
		secs, err := c.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: kubernetes.SessionLabel + "=" + string(id)})
		if err != nil || len(secs.Items) != 1 {
			t.Fatalf("secret of %s: %v", id, err)
		}
		return string(secs.Items[0].Data["vnc-password"])
	}
	password := pw(s1)

	replicas := func(id wire.SessionID) int32 {
		t.Helper()
		d, err := c.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{LabelSelector: kubernetes.SessionLabel + "=" + string(id)})
		if err != nil || len(d.Items) != 1 {
			t.Fatalf("deployment of %s: %v", id, err)
		}
		return *d.Items[0].Spec.Replicas
	}
	pvcCount := func(id wire.SessionID) int {
		l, err := c.CoreV1().PersistentVolumeClaims(ns).List(ctx, metav1.ListOptions{LabelSelector: kubernetes.SessionLabel + "=" + string(id)})
		if err != nil {
			t.Fatal(err)
		}
		return len(l.Items)
	}

	// Hibernate, without a spec: the stored one is kept.
	applyOK(t, b, wire.Assignment{SessionID: s1, TenantID: testTenant, Generation: 2, Desired: wire.DesiredHibernated})
	st := waitPhase(t, b, s1, wire.PhaseHibernated, "")
	if st.ObservedGeneration != 2 || replicas(s1) != 0 || pvcCount(s1) != 1 {
		t.Fatalf("hibernated: %+v replicas %d pvcs %d", st, replicas(s1), pvcCount(s1))
	}
	// Wake.
	applyOK(t, b, assignment(t, s1, 3, wire.DesiredRunning))
	waitPhase(t, b, s1, wire.PhaseRunning, "")
	if replicas(s1) != 1 || pw(s1) != password {
		t.Fatalf("after wake: replicas %d, password changed %v", replicas(s1), pw(s1) != password)
	}
	// Stop.
	applyOK(t, b, wire.Assignment{SessionID: s1, TenantID: testTenant, Generation: 4, Desired: wire.DesiredStopped})
	waitPhase(t, b, s1, wire.PhaseStopped, "")
	if replicas(s1) != 0 || pvcCount(s1) != 1 {
		t.Fatalf("stopped: replicas %d pvcs %d", replicas(s1), pvcCount(s1))
	}

	// s2's owner asked to keep the home volume.
	if _, err := c.CoreV1().PersistentVolumeClaims(ns).Patch(ctx, "ss-"+dashed(s2)+"-home", "application/merge-patch+json",
		[]byte(`{"metadata":{"annotations":{"`+kubernetes.RetainAnnotation+`":"true"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	// Delete both.
	applyOK(t, b, wire.Assignment{SessionID: s1, TenantID: testTenant, Generation: 5, Desired: wire.DesiredDeleted},
		wire.Assignment{SessionID: s2, TenantID: testTenant, Generation: 2, Desired: wire.DesiredDeleted})
	waitPhase(t, b, s1, wire.PhaseDeleted, "")
	waitPhase(t, b, s2, wire.PhaseDeleted, "")
	poll.UntilNil(t, 60*time.Second, "everything but the retained home gone", func() error {
		var left []string
		add := func(kind string, items []metav1.ObjectMeta) {
			for _, m := range items {
				left = append(left, kind+"/"+m.Name)
			}
		}
		sel := metav1.ListOptions{LabelSelector: kubernetes.ManagedByLabel + "=" + kubernetes.ManagedByValue}
		d, _ := c.AppsV1().Deployments(ns).List(ctx, sel)
		add("deployment", metas(d.Items, func(x appsv1.Deployment) metav1.ObjectMeta { return x.ObjectMeta }))
		p, _ := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		add("pod", metas(p.Items, func(x corev1.Pod) metav1.ObjectMeta { return x.ObjectMeta }))
		s, _ := c.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
		add("service", metas(s.Items, func(x corev1.Service) metav1.ObjectMeta { return x.ObjectMeta }))
		se, _ := c.CoreV1().Secrets(ns).List(ctx, sel)
		add("secret", metas(se.Items, func(x corev1.Secret) metav1.ObjectMeta { return x.ObjectMeta }))
		cm, _ := c.CoreV1().ConfigMaps(ns).List(ctx, sel)
		add("configmap", metas(cm.Items, func(x corev1.ConfigMap) metav1.ObjectMeta { return x.ObjectMeta }))
		pv, _ := c.CoreV1().PersistentVolumeClaims(ns).List(ctx, metav1.ListOptions{})
		add("pvc", metas(pv.Items, func(x corev1.PersistentVolumeClaim) metav1.ObjectMeta { return x.ObjectMeta }))
		if !slices.Equal(left, []string{"pvc/ss-" + dashed(s2) + "-home"}) {
			return fmt.Errorf("left: %v", left)
		}
		return nil
	})
	kept, err := c.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "ss-"+dashed(s2)+"-home", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(kept.OwnerReferences) != 0 || kept.Labels[kubernetes.ManagedByLabel] != "" ||
		kept.Labels[kubernetes.RetainedLabel] != "true" || kept.Labels[kubernetes.SessionLabel] != string(s2) {
		t.Errorf("retained pvc: owners %v labels %v", kept.OwnerReferences, kept.Labels)
	}
	if obs, err := b.Observe(ctx); err != nil || len(obs) != 0 {
		t.Errorf("observe after delete: %v %v", obs, err)
	}
	// A resync must leave the released volume alone: it no longer carries our labels.
	if err := b.Resync(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := c.CoreV1().PersistentVolumeClaims(ns).Get(ctx, kept.Name, metav1.GetOptions{}); err != nil {
		t.Errorf("retained pvc after resync: %v", err)
	}
	for _, id := range []wire.SessionID{s1, s2} {
		ph := w.phases(id)
		if !slices.Contains(ph, wire.PhaseRunning) || ph[len(ph)-1] != wire.PhaseDeleted {
			t.Errorf("watched phases of %s: %v", id, ph)
		}
	}
	t.Logf("watched phases of s1: %v", w.phases(s1))
}

func dashed(id wire.SessionID) string {
	out := []byte(id)
	for i, c := range out {
		if c == '_' {
			out[i] = '-'
		}
	}
	return string(out)
}

func metas[T any](items []T, f func(T) metav1.ObjectMeta) []metav1.ObjectMeta {
	out := make([]metav1.ObjectMeta, 0, len(items))
	for _, it := range items {
		out = append(out, f(it))
	}
	return out
}
