package kubernetes_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"

	"streamspace.dev/agent/backend/kubernetes"
	"streamspace.dev/agent/reconcile"
	"streamspace.dev/libs/poll"
	"streamspace.dev/libs/wire"
)

// sessionPod waits for the session's pod and returns it.
func sessionPod(t *testing.T, ns string, id wire.SessionID) *corev1.Pod {
	t.Helper()
	c := adminClient(t)
	var pod *corev1.Pod
	poll.UntilNil(t, 30*time.Second, "pod of "+string(id), func() error {
		l, err := c.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: kubernetes.SessionLabel + "=" + string(id)})
		if err != nil {
			return err
		}
		for i := range l.Items {
			if l.Items[i].DeletionTimestamp == nil {
				pod = &l.Items[i]
				return nil
			}
		}
		return errors.New("no pod yet")
	})
	return pod
}

// setWaiting writes a kubelet-like status into a pod: not Ready, its container waiting
// for reason. The phase stays Running so that kwok, which readies Pending pods, does
// not overwrite it.
func setWaiting(t *testing.T, ns, pod, reason, msg string, restarts int32) {
	t.Helper()
	patch, _ := json.Marshal(map[string]any{"status": map[string]any{
		"phase": "Running",
		"conditions": []map[string]any{
			{"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
			{"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady"},
		},
		"containerStatuses": []map[string]any{{
			"name": "session", "image": "registry.invalid/nope:1", "imageID": "", "ready": false, "restartCount": restarts,
			"state": map[string]any{"waiting": map[string]any{"reason": reason, "message": msg}},
		}},
	}})
	if _, err := adminClient(t).CoreV1().Pods(ns).Patch(context.Background(), pod, types.StrategicMergePatchType, patch,
		metav1.PatchOptions{}, "status"); err != nil {
		t.Fatal(err)
	}
}

func TestPodFailuresMapToPhases(t *testing.T) {
	needCluster(t)
	t.Parallel()
	c := adminClient(t)
	ns := newNamespace(t, c)
	b := newBackend(t, ns, newStreamListener(t), options{})

	for _, tc := range []struct {
		reason   string
		restarts int32
		phase    wire.Phase
	}{
		{"ImagePullBackOff", 0, wire.PhaseFailed},
		{"ErrImagePull", 0, wire.PhaseStarting},
		{"CrashLoopBackOff", 1, wire.PhaseStarting},
		{"CrashLoopBackOff", 5, wire.PhaseFailed},
		{"CreateContainerConfigError", 0, wire.PhaseFailed},
	} {
		t.Run(fmt.Sprintf("%s-%d", tc.reason, tc.restarts), func(t *testing.T) {
			id := newSessionID()
			applyOK(t, b, assignment(t, id, 1, wire.DesiredRunning))
			waitPhase(t, b, id, wire.PhaseRunning, "")
			pod := sessionPod(t, ns, id)
			t0 := time.Now()
			setWaiting(t, ns, pod.Name, tc.reason, "failed to pull image \"registry.invalid/nope:1\": not found", tc.restarts)
			st := waitPhase(t, b, id, tc.phase, tc.reason)
			t.Logf("%s reported %s/%s in %v: %q", tc.reason, st.Phase, st.Reason, time.Since(t0).Round(time.Millisecond), st.Message)
			if st.Message == "" || st.Endpoint != nil {
				t.Errorf("status %+v", st)
			}
		})
	}

	t.Run("Unschedulable", func(t *testing.T) {
		id := newSessionID()
		a := assignment(t, id, 1, wire.DesiredRunning)
		var spec map[string]any
		_ = json.Unmarshal(a.Spec, &spec)
		spec["cpu_millis"] = 10_000_000 // ten thousand cores: more than the node has
		a.Spec, _ = json.Marshal(spec)
		applyOK(t, b, a)
		waitPhase(t, b, id, wire.PhasePending, "Unschedulable")
		// The scheduler's first verdict may name the still-unbound PVC; once the volume binds
		// it names the real shortage, and the reported message must follow it.
		poll.UntilNil(t, 60*time.Second, "an Unschedulable message naming cpu", func() error {
			st, _ := b.Status(id)
			if st.Reason != "Unschedulable" || !strings.Contains(st.Message, "cpu") {
				return fmt.Errorf("status %s/%s %q", st.Phase, st.Reason, st.Message)
			}
			return nil
		})
	})

	t.Run("InvalidSpec", func(t *testing.T) {
		id := newSessionID()
		a := assignment(t, id, 1, wire.DesiredRunning)
		a.Spec = json.RawMessage(`{"image":"","ports":[]}`)
		errs := b.Apply(context.Background(), []wire.Assignment{a})
		var we *wire.Error
		if len(errs) != 1 || !errors.As(errs[0], &we) || we.Code != wire.CodeInvalid || !we.Permanent {
			t.Fatalf("errors %v", errs)
		}
		if !strings.Contains(we.Message, "image") {
			t.Errorf("message %q", we.Message)
		}
		if _, err := c.CoreV1().ConfigMaps(ns).Get(context.Background(), "ss-"+dashed(id), metav1.GetOptions{}); !isNotFound(err) {
			t.Errorf("an invalid spec reached the cluster: %v", err)
		}
	})
}

// limitedConfig returns a rest.Config for a new ServiceAccount in ns bound to a Role
// with rules, authenticated by a token from the TokenRequest API.
func limitedConfig(t *testing.T, ns string, rules []rbacv1.PolicyRule) *rest.Config {
	t.Helper()
	c := adminClient(t)
	ctx := context.Background()
	if _, err := c.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "agent"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "agent"}, Rules: rules}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "agent"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "agent"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "agent", Namespace: ns}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tok, err := c.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "agent", &authnTokenRequest, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := rest.AnonymousClientConfig(admin)
	cfg.BearerToken = tok.Status.Token
	cfg.QPS, cfg.Burst = admin.QPS, admin.Burst
	return cfg
}

// agentRules is what the agent's Role grants in its namespace (the chart's Role).
func agentRules(drop func(group, resource, verb string) bool) []rbacv1.PolicyRule {
	all := []struct {
		group     string
		resources []string
		verbs     []string
	}{
		{"", []string{"configmaps", "services", "persistentvolumeclaims"}, []string{"get", "list", "watch", "create", "update", "patch", "delete"}},
		{"", []string{"secrets"}, []string{"get", "list", "create", "delete"}},
		{"", []string{"pods"}, []string{"get", "list", "watch"}},
		{"", []string{"resourcequotas"}, []string{"get", "list"}},
		{"apps", []string{"deployments"}, []string{"get", "list", "watch", "create", "update", "patch", "delete"}},
		{"discovery.k8s.io", []string{"endpointslices"}, []string{"get", "list", "watch"}},
	}
	var out []rbacv1.PolicyRule
	for _, r := range all {
		for _, res := range r.resources {
			var verbs []string
			for _, v := range r.verbs {
				if drop == nil || !drop(r.group, res, v) {
					verbs = append(verbs, v)
				}
			}
			out = append(out, rbacv1.PolicyRule{APIGroups: []string{r.group}, Resources: []string{res}, Verbs: verbs})
		}
	}
	return out
}

func TestRBACForbiddenIsReportedPerSession(t *testing.T) {
	needCluster(t)
	t.Parallel()
	c := adminClient(t)
	ns := newNamespace(t, c)
	cfg := limitedConfig(t, ns, agentRules(func(group, res, verb string) bool { return res == "secrets" && verb == "create" }))
	b := newBackend(t, ns, newStreamListener(t), options{cfg: cfg})
	ctx := context.Background()

	rec := reconcile.New(b, nil)
	rctx, stop := context.WithCancel(ctx)
	defer func() { stop(); rec.Wait() }()
	if err := rec.Start(rctx); err != nil {
		t.Fatal(err)
	}
	s1, s2 := newSessionID(), newSessionID()
	acks, err := rec.Push(ctx, &wire.DesiredState{Assignments: []wire.Assignment{
		assignment(t, s1, 1, wire.DesiredRunning), assignment(t, s2, 1, wire.DesiredRunning)}})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range acks {
		if a.Error == nil || a.Error.Code != wire.CodeForbidden || !a.Error.Permanent ||
			!strings.Contains(a.Error.Message, "secrets") || !strings.Contains(a.Error.Message, ns) {
			t.Errorf("ack %s: %+v", a.SessionID, a.Error)
		} else {
			t.Logf("ack %s: %s", a.SessionID, a.Error.Message)
		}
	}
	for _, id := range []wire.SessionID{s1, s2} {
		st := waitPhase(t, b, id, wire.PhaseFailed, "Forbidden")
		if !strings.Contains(st.Message, "secrets") {
			t.Errorf("status message %q", st.Message)
		}
	}
	// Still alive and answering.
	if obs, err := b.Observe(ctx); err != nil || len(obs) != 2 {
		t.Fatalf("observe: %v %v", obs, err)
	}
	if capa, err := b.Capacity(ctx); err != nil {
		t.Fatalf("capacity: %v", err)
	} else if info, _ := b.Info(ctx); info.Cluster["capacity_source"] != kubernetes.CapacityUnknown {
		t.Errorf("capacity %+v from %q; nodes and quotas are not readable here", capa, info.Cluster["capacity_source"])
	}

	// The operator grants the verb; the next apply (a gateway retry) succeeds.
	if _, err := c.RbacV1().Roles(ns).Update(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "agent"}, Rules: agentRules(nil)}, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll.UntilNil(t, 30*time.Second, "apply after grant", func() error {
		if errs := b.Apply(ctx, []wire.Assignment{assignment(t, s1, 1, wire.DesiredRunning)}); errs != nil {
			return errs[0]
		}
		return nil
	})
	waitPhase(t, b, s1, wire.PhaseRunning, "")
}

func TestCapacity(t *testing.T) {
	needCluster(t)
	t.Parallel()
	c := adminClient(t)
	ctx := context.Background()

	t.Run("nodes", func(t *testing.T) {
		ns := newNamespace(t, c)
		b := newBackend(t, ns, newStreamListener(t), options{})
		id := newSessionID()
		applyOK(t, b, assignment(t, id, 1, wire.DesiredRunning))
		waitPhase(t, b, id, wire.PhaseRunning, "")
		capa, err := b.Capacity(ctx)
		if err != nil {
			t.Fatal(err)
		}
		info, _ := b.Info(ctx)
		t.Logf("capacity %+v source %s version %s", capa, info.Cluster["capacity_source"], info.Cluster["kubernetes_version"])
		// The kwok node has 500 CPUs (main_test.go); other tests' sessions run beside ours.
		if info.Cluster["capacity_source"] != kubernetes.CapacityNodes || capa.CPUAllocatableMillis > 500_000 ||
			capa.CPUAllocatableMillis < 1000 || capa.CPUUsedMillis != 250 || capa.MemoryUsedBytes != 256<<20 || capa.Sessions != 1 {
			t.Errorf("capacity %+v", capa)
		}
		// The locally built apiserver reports v0.0.0-master (no version stamped in by
		// its build); a release reports v1.x. Either way the field is filled.
		if !strings.HasPrefix(info.Cluster["kubernetes_version"], "v") {
			t.Errorf("info %v", info.Cluster)
		}
	})

	t.Run("quota", func(t *testing.T) {
		ns := newNamespace(t, c)
		if _, err := c.CoreV1().ResourceQuotas(ns).Create(ctx, &corev1.ResourceQuota{
			ObjectMeta: metav1.ObjectMeta{Name: "q"},
			Spec: corev1.ResourceQuotaSpec{Hard: corev1.ResourceList{
				corev1.ResourceRequestsCPU: resource.MustParse("4"), corev1.ResourceRequestsMemory: resource.MustParse("8Gi"),
			}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		cfg := limitedConfig(t, ns, agentRules(nil))
		b := newBackend(t, ns, newStreamListener(t), options{cfg: cfg})
		poll.UntilNil(t, 30*time.Second, "quota capacity", func() error {
			capa, err := b.Capacity(ctx)
			if err != nil {
				return err
			}
			info, _ := b.Info(ctx)
			if info.Cluster["capacity_source"] != kubernetes.CapacityQuota || capa.CPUAllocatableMillis != 4000 || capa.MemoryAllocatableBytes != 8<<30 {
				return fmt.Errorf("capacity %+v from %s", capa, info.Cluster["capacity_source"])
			}
			return nil
		})
	})
}

var authnTokenRequest = authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(3600))}}
