package charts

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"streamspace.dev/e2e/kube"
)

// fieldManager names this test's server-side applies.
const fieldManager = "streamspace-charts-test"

// obj is a loosely typed Kubernetes object, as the apiserver returns it.
type obj = map[string]any

// chartCase is one chart rendered with one values file, into its own namespace.
type chartCase struct {
	name   string // subtest name and release name
	chart  string // directory under infra/charts
	values string // file under testdata
	ns     string
	// agent chart only: what the values say.
	gateway         string
	clusterCapacity bool
	// preexisting are Secrets the values refer to but the chart does not create.
	preexisting []string
	// pods is how many pods the Deployment runs.
	pods int
}

var cases = []chartCase{
	{name: "agent", chart: "streamspace-agent", values: "agent.yaml", ns: "acme-agent",
		gateway: "gateway.streamspace.example.com:7443", pods: 1},
	{name: "agent-nodes", chart: "streamspace-agent", values: "agent-nodes.yaml", ns: "acme-agent-nodes",
		gateway: "[2001:db8::1]:7443", clusterCapacity: true, preexisting: []string{"my-agent-token"}, pods: 1},
	{name: "streamspace", chart: "streamspace", values: "streamspace.yaml", ns: "streamspace", pods: 2},
	{name: "streamspace-existing", chart: "streamspace", values: "streamspace-existing.yaml", ns: "streamspace-existing",
		preexisting: []string{"streamspace-db", "streamspace-kek", "streamspace-gateway-tls"}, pods: 1},
}

// agentRules is what the agent's Role must grant in its namespace: what
// agent/backend/kubernetes uses, and nothing more. group/resource -> verbs.
var agentRules = map[string][]string{
	"/configmaps":                     {"create", "delete", "get", "list", "patch", "update", "watch"},
	"/services":                       {"create", "delete", "get", "list", "patch", "update", "watch"},
	"/persistentvolumeclaims":         {"create", "delete", "get", "list", "patch", "update", "watch"},
	"apps/deployments":                {"create", "delete", "get", "list", "patch", "update", "watch"},
	"/secrets":                        {"create", "delete", "get", "list"},
	"/pods":                           {"get", "list", "watch"},
	"discovery.k8s.io/endpointslices": {"get", "list", "watch"},
	"/resourcequotas":                 {"get", "list"},
}

func TestCharts(t *testing.T) {
	root := repoRoot(t)
	// The helm build (minutes when cold, instant when cached) and the cluster's start
	// (seconds) overlap.
	type built struct {
		path string
		err  error
	}
	helmc := make(chan built, 1)
	go func() {
		p, err := buildHelm(root)
		helmc <- built{p, err}
	}()
	c := kube.ForTest(t, kube.Options{})
	b := <-helmc
	if b.err != nil {
		t.Fatal(b.err)
	}
	h := &helm{t: t, bin: b.path, charts: filepath.Join(root, "infra", "charts")}
	out, _ := exec.Command(h.bin, "version", "--short").CombinedOutput()
	t.Logf("helm %s (%s)", strings.TrimSpace(string(out)), h.bin)

	t.Run("schema", func(t *testing.T) {
		t.Parallel()
		testSchema(t, h)
	})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			testChart(t, h, c, tc)
		})
	}
}

// testSchema: values.schema.json refuses what the charts cannot run without.
func testSchema(t *testing.T, h *helm) {
	for _, bad := range []struct {
		name, chart string
		set         []string
		want        []string
	}{
		{"agent without a token or existingSecret", "streamspace-agent",
			[]string{"gateway.address=gw.example.com:7443", "gateway.enrollURL=https://gw.example.com/api/v1/agents/enroll"},
			[]string{"/enrollment/token", "/enrollment/existingSecret"}},
		{"agent without a gateway address", "streamspace-agent",
			[]string{"enrollment.token=t0k3n", "gateway.enrollURL=https://gw.example.com/api/v1/agents/enroll"},
			[]string{"/gateway/address"}},
		{"agent with a token but no enrollment URL", "streamspace-agent",
			[]string{"enrollment.token=t0k3n", "gateway.address=gw.example.com:7443"},
			[]string{"/gateway/enrollURL"}},
		{"agent sending its token over plain HTTP", "streamspace-agent",
			[]string{"enrollment.token=t0k3n", "gateway.address=gw.example.com:7443", "gateway.enrollURL=http://gw.example.com/enroll"},
			[]string{"/gateway/enrollURL"}},
		{"agent with a gateway address without a port", "streamspace-agent",
			[]string{"enrollment.token=t0k3n", "gateway.address=gw.example.com", "gateway.enrollURL=https://gw.example.com/api/v1/agents/enroll"},
			[]string{"/gateway/address"}},
		{"control plane without a database or KEK", "streamspace", nil,
			[]string{"/database/url", "/kek/value"}},
		{"control plane forwarding streams over plain HTTP", "streamspace",
			[]string{"database.url=postgres://u@db/streamspace", "kek.value=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "gateway.advertiseURL=http://$(POD_IP):8080"},
			[]string{"/gateway/advertiseURL"}},
	} {
		args := []string{"template", "x", filepath.Join(h.charts, bad.chart), "--namespace", "x"}
		for _, s := range bad.set {
			args = append(args, "--set", s)
		}
		out, err := h.run(args...)
		if err == nil {
			t.Errorf("%s: helm template succeeded, want a schema failure; rendered:\n%s", bad.name, out)
			continue
		}
		if !strings.Contains(out, "don't meet the specifications of the schema") {
			t.Errorf("%s: failed, but not on the schema: %v\n%s", bad.name, err, out)
		}
		for _, w := range bad.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: the error does not name %s:\n%s", bad.name, w, out)
			}
		}
	}
	// The representative values pass, with the agent's token given on the command line
	// as the portal's install command does.
	if out, err := h.run("template", "agent", filepath.Join(h.charts, "streamspace-agent"), "--namespace", "x",
		"--set", "gateway.address=gw.example.com:7443",
		"--set", "gateway.enrollURL=https://gw.example.com/api/v1/agents/enroll",
		"--set", "enrollment.token=t0k3n"); err != nil {
		t.Errorf("the README's install command does not render: %v\n%s", err, out)
	}
}

func testChart(t *testing.T, h *helm, c *kube.Cluster, tc chartCase) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	chart := filepath.Join(h.charts, tc.chart)
	values := filepath.Join(testdataDir(t), tc.values)

	if out, err := h.run("lint", "--strict", chart, "--namespace", tc.ns, "-f", values); err != nil {
		t.Fatalf("helm lint: %v\n%s", err, out)
	}
	rendered, err := h.run("template", tc.name, chart, "--namespace", tc.ns, "-f", values, "--kube-version", kube.Version)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, rendered)
	}
	docs, err := splitDocs(rendered)
	if err != nil {
		t.Fatalf("%v\n%s", err, rendered)
	}

	// The namespace exists for real first, enforcing the "restricted" Pod Security
	// Standard: pods that break it are refused when the ReplicaSet creates them.
	createNamespace(ctx, t, c, tc.ns)
	for _, s := range tc.preexisting {
		createSecret(ctx, t, c, tc.ns, s)
	}

	applied := map[string][]obj{} // kind -> objects as the apiserver accepted them
	for _, d := range docs {
		if d.namespaced() && d.namespace != tc.ns {
			t.Errorf("%s %s: namespace %q, want the release namespace %q", d.kind, d.name, d.namespace, tc.ns)
		}
		got, warnings, err := apply(ctx, c, d, true)
		if err != nil {
			t.Errorf("server-side apply (dry run) of %s %s refused: %v\n%s", d.kind, d.name, err, d.yaml)
			continue
		}
		for _, w := range warnings {
			t.Errorf("server-side apply (dry run) of %s %s: warning: %s", d.kind, d.name, w)
		}
		applied[d.kind] = append(applied[d.kind], got)
	}
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("%d objects accepted by the apiserver (dry run): %s", len(docs), kinds(applied))

	if len(applied["Deployment"]) != 1 {
		t.Fatalf("%d Deployments rendered, want 1", len(applied["Deployment"]))
	}
	dep := applied["Deployment"][0]
	checkSecurity(t, dep)
	switch tc.chart {
	case "streamspace-agent":
		checkAgent(t, tc, applied)
	case "streamspace":
		checkControlPlane(t, applied)
	}

	// Then for real: the controllers create the pods (kwok makes them Running), which
	// proves the ServiceAccount, volumes and Secrets are wired and the pod passes the
	// restricted Pod Security Standard.
	for _, d := range docs {
		if _, _, err := apply(ctx, c, d, false); err != nil {
			t.Fatalf("server-side apply of %s %s: %v", d.kind, d.name, err)
		}
	}
	sa := str(dep, "spec", "template", "spec", "serviceAccountName")
	waitPodsRunning(ctx, t, c, tc.ns, dep, tc.pods, sa)
	if tc.chart == "streamspace-agent" {
		checkAccess(ctx, t, c, tc, sa)
	}
}

// checkSecurity asserts the hardening both charts promise on every container.
func checkSecurity(t *testing.T, dep obj) {
	t.Helper()
	pod := m(dep, "spec", "template", "spec")
	psc := m(pod, "securityContext")
	if psc["runAsNonRoot"] != true {
		t.Errorf("pod securityContext.runAsNonRoot = %v, want true", psc["runAsNonRoot"])
	}
	if got := str(psc, "seccompProfile", "type"); got != "RuntimeDefault" {
		t.Errorf("pod seccompProfile %q, want RuntimeDefault", got)
	}
	containers, _ := pod["containers"].([]any)
	if len(containers) == 0 {
		t.Fatal("no containers")
	}
	for _, ci := range containers {
		ct := ci.(obj)
		name := ct["name"]
		sc := m(ct, "securityContext")
		for field, want := range map[string]any{"runAsNonRoot": true, "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false, "privileged": nil} {
			if sc[field] != want {
				t.Errorf("container %v: securityContext.%s = %v, want %v", name, field, sc[field], want)
			}
		}
		if drop, _ := m(sc, "capabilities")["drop"].([]any); len(drop) != 1 || drop[0] != "ALL" {
			t.Errorf("container %v: capabilities.drop = %v, want [ALL]", name, drop)
		}
		if add := m(sc, "capabilities")["add"]; add != nil {
			t.Errorf("container %v: capabilities.add = %v, want none", name, add)
		}
		if got := str(sc, "seccompProfile", "type"); got != "RuntimeDefault" {
			t.Errorf("container %v: seccompProfile %q, want RuntimeDefault", name, got)
		}
		res := m(ct, "resources")
		for _, k := range []string{"requests", "limits"} {
			for _, r := range []string{"cpu", "memory"} {
				if m(res, k)[r] == nil {
					t.Errorf("container %v: resources.%s.%s not set", name, k, r)
				}
			}
		}
	}
}

// checkAgent asserts the agent chart's least privilege and wiring.
func checkAgent(t *testing.T, tc chartCase, applied map[string][]obj) {
	t.Helper()
	if n := len(applied["Role"]); n != 1 {
		t.Fatalf("%d Roles, want 1", n)
	}
	role := applied["Role"][0]
	if ns := str(role, "metadata", "namespace"); ns != tc.ns {
		t.Errorf("Role in namespace %q, want %q", ns, tc.ns)
	}
	got := map[string][]string{}
	for _, ri := range role["rules"].([]any) {
		r := ri.(obj)
		if r["nonResourceURLs"] != nil || r["resourceNames"] != nil {
			t.Errorf("Role rule %v: nonResourceURLs/resourceNames are not expected", r)
		}
		for _, g := range strs(r["apiGroups"]) {
			for _, res := range strs(r["resources"]) {
				if g == "*" || res == "*" || slices.Contains(strs(r["verbs"]), "*") {
					t.Errorf("Role rule %v grants a wildcard", r)
				}
				got[g+"/"+res] = append(got[g+"/"+res], strs(r["verbs"])...)
			}
		}
	}
	for k := range got {
		sort.Strings(got[k])
	}
	if !equalRules(got, agentRules) {
		t.Errorf("the agent's Role grants\n  %v\nwant exactly\n  %v", got, agentRules)
	}

	if n := len(applied["RoleBinding"]); n != 1 {
		t.Fatalf("%d RoleBindings, want 1", n)
	}
	rb := applied["RoleBinding"][0]
	if k, n := str(rb, "roleRef", "kind"), str(rb, "roleRef", "name"); k != "Role" || n != str(role, "metadata", "name") {
		t.Errorf("RoleBinding refers to %s %s, want the Role %s", k, n, str(role, "metadata", "name"))
	}
	sa := str(applied["Deployment"][0], "spec", "template", "spec", "serviceAccountName")
	checkSubjects(t, "RoleBinding", rb, tc.ns, sa)
	if len(applied["ServiceAccount"]) != 1 || str(applied["ServiceAccount"][0], "metadata", "name") != sa {
		t.Errorf("the Deployment runs as %q, which the chart does not create", sa)
	}

	// Probes on the agent's health endpoint, on by default, at the address the agent
	// is told to serve it on.
	ct := m(applied["Deployment"][0], "spec", "template", "spec")["containers"].([]any)[0].(obj)
	for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
		if got := str(ct, probe, "httpGet", "path"); got != path {
			t.Errorf("agent %s path %q, want %q", probe, got, path)
		}
	}
	healthEnv := ""
	for _, e := range ct["env"].([]any) {
		if e.(obj)["name"] == "STREAMSPACE_HEALTH_LISTEN" {
			healthEnv, _ = e.(obj)["value"].(string)
		}
	}
	if healthEnv != ":8081" {
		t.Errorf("agent STREAMSPACE_HEALTH_LISTEN %q, want \":8081\" (the probes' port)", healthEnv)
	}

	// Nothing cluster-wide, unless the node-reading toggle is on; then read-only.
	crs, crbs := applied["ClusterRole"], applied["ClusterRoleBinding"]
	if !tc.clusterCapacity {
		if len(crs)+len(crbs) != 0 {
			t.Errorf("cluster-wide objects rendered with rbac.clusterCapacity off: %d ClusterRoles, %d ClusterRoleBindings", len(crs), len(crbs))
		}
	} else {
		if len(crs) != 1 || len(crbs) != 1 {
			t.Fatalf("rbac.clusterCapacity on: %d ClusterRoles, %d ClusterRoleBindings, want 1 and 1", len(crs), len(crbs))
		}
		for _, ri := range crs[0]["rules"].([]any) {
			r := ri.(obj)
			for _, v := range strs(r["verbs"]) {
				if v != "get" && v != "list" && v != "watch" {
					t.Errorf("the capacity ClusterRole grants %q on %v: want read-only", v, r["resources"])
				}
			}
			for _, res := range strs(r["resources"]) {
				if res != "nodes" && res != "pods" {
					t.Errorf("the capacity ClusterRole reads %q: want only nodes (and pods)", res)
				}
			}
		}
		if str(crbs[0], "roleRef", "name") != str(crs[0], "metadata", "name") {
			t.Errorf("ClusterRoleBinding refers to %s", str(crbs[0], "roleRef", "name"))
		}
		checkSubjects(t, "ClusterRoleBinding", crbs[0], tc.ns, sa)
	}

	// The container is configured from the values.
	env := map[string]obj{}
	for _, e := range ct["env"].([]any) {
		env[e.(obj)["name"].(string)] = e.(obj)
	}
	if v := env["STREAMSPACE_GATEWAY"]["value"]; v != tc.gateway {
		t.Errorf("STREAMSPACE_GATEWAY = %v, want %q", v, tc.gateway)
	}
	for _, k := range []string{"STREAMSPACE_ENROLL_URL", "STREAMSPACE_ENROLLMENT_TOKEN_FILE", "STREAMSPACE_STATE_DIR", "STREAMSPACE_BACKEND", "STREAMSPACE_NAMESPACE"} {
		if env[k] == nil {
			t.Errorf("%s not set", k)
		}
	}
	if env["STREAMSPACE_ENROLLMENT_TOKEN"] != nil {
		t.Error("the token is passed in the environment; it must be a mounted file")
	}
	if str(env["STREAMSPACE_NAMESPACE"], "valueFrom", "fieldRef", "fieldPath") != "metadata.namespace" {
		t.Errorf("STREAMSPACE_NAMESPACE = %v, want the pod's namespace", env["STREAMSPACE_NAMESPACE"])
	}
	if str(applied["Deployment"][0], "spec", "strategy", "type") != "Recreate" {
		t.Error("the agent Deployment must use the Recreate strategy (one identity, never two pods)")
	}
}

func checkSubjects(t *testing.T, kind string, b obj, ns, sa string) {
	t.Helper()
	subs, _ := b["subjects"].([]any)
	if len(subs) != 1 {
		t.Fatalf("%s has %d subjects, want 1", kind, len(subs))
	}
	s := subs[0].(obj)
	if s["kind"] != "ServiceAccount" || s["name"] != sa || s["namespace"] != ns {
		t.Errorf("%s subject %v, want ServiceAccount %s/%s", kind, s, ns, sa)
	}
}

// checkControlPlane asserts the control plane chart's probes, ports and PDB.
func checkControlPlane(t *testing.T, applied map[string][]obj) {
	t.Helper()
	ct := m(applied["Deployment"][0], "spec", "template", "spec")["containers"].([]any)[0].(obj)
	for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"} {
		if got := str(ct, probe, "httpGet", "path"); got != path {
			t.Errorf("%s path %q, want %q", probe, got, path)
		}
	}
	env := map[string]obj{}
	for _, e := range ct["env"].([]any) {
		env[e.(obj)["name"].(string)] = e.(obj)
	}
	for _, k := range []string{"DATABASE_URL", "STREAMSPACE_KEK"} {
		if env[k] == nil || str(env[k], "valueFrom", "secretKeyRef", "name") == "" {
			t.Errorf("%s must come from a Secret: %v", k, env[k])
		}
	}
	for _, k := range []string{"STREAMSPACE_ISSUER", "STREAMSPACE_AUDIENCE", "STREAMSPACE_AGENT_LISTEN", "STREAMSPACE_LISTEN"} {
		if env[k] == nil {
			t.Errorf("%s not set", k)
		}
	}
	// Replicas forward session streams to each other at the pod's own address.
	if str(env["POD_IP"], "valueFrom", "fieldRef", "fieldPath") != "status.podIP" {
		t.Errorf("POD_IP = %v, want the pod's IP", env["POD_IP"])
	}
	// Over mutual TLS, on the peer listener: never the HTTP port, the token would travel
	// in clear text.
	if v := env["STREAMSPACE_GATEWAY_ADVERTISE_URL"]["value"]; v != "https://$(POD_IP):8444" {
		t.Errorf("STREAMSPACE_GATEWAY_ADVERTISE_URL = %v, want the pod's IP on the peer port", v)
	}
	if v := env["STREAMSPACE_GATEWAY_PEER_LISTEN"]["value"]; v != ":8444" {
		t.Errorf("STREAMSPACE_GATEWAY_PEER_LISTEN = %v, want :8444", v)
	}
	peerPort := false
	for _, p := range ct["ports"].([]any) {
		if p.(obj)["name"] == "gateway-peer" && fmt.Sprint(p.(obj)["containerPort"]) == "8444" && p.(obj)["protocol"] == "TCP" {
			peerPort = true
		}
	}
	if !peerPort {
		t.Errorf("no containerPort gateway-peer 8444/TCP: %v", ct["ports"])
	}
	if len(applied["PodDisruptionBudget"]) != 1 {
		t.Errorf("%d PodDisruptionBudgets, want 1", len(applied["PodDisruptionBudget"]))
	}
	protos := map[string]bool{}
	for _, svc := range applied["Service"] {
		for _, p := range m(svc, "spec")["ports"].([]any) {
			protos[fmt.Sprintf("%s/%v", p.(obj)["protocol"], p.(obj)["name"])] = true
		}
	}
	for _, want := range []string{"TCP/http", "UDP/agents-quic", "TCP/agents-enroll"} {
		if !protos[want] {
			t.Errorf("no Service port %s (have %v)", want, protos)
		}
	}
}

// checkAccess asks the apiserver what the agent's ServiceAccount may do.
func checkAccess(ctx context.Context, t *testing.T, c *kube.Cluster, tc chartCase, sa string) {
	t.Helper()
	type q struct {
		verb, group, resource, ns string
		want                      bool
	}
	qs := []q{
		{"create", "apps", "deployments", tc.ns, true},
		{"patch", "apps", "deployments", tc.ns, true},
		{"watch", "", "pods", tc.ns, true},
		{"create", "", "secrets", tc.ns, true},
		{"list", "discovery.k8s.io", "endpointslices", tc.ns, true},
		{"patch", "", "persistentvolumeclaims", tc.ns, true},
		{"list", "", "resourcequotas", tc.ns, true},
		// Never beyond its namespace, never more than it needs.
		{"create", "apps", "deployments", "default", false},
		{"list", "", "secrets", "", false},
		{"get", "", "secrets", "kube-system", false},
		{"watch", "", "secrets", tc.ns, false},
		{"update", "", "secrets", tc.ns, false},
		{"create", "", "pods", tc.ns, false},
		{"delete", "", "pods", tc.ns, false},
		{"create", "", "pods/exec", tc.ns, false},
		{"update", "rbac.authorization.k8s.io", "roles", tc.ns, false},
		{"delete", "", "namespaces", "", false},
		{"list", "", "nodes", "", tc.clusterCapacity},
		{"list", "", "pods", "", tc.clusterCapacity},
		{"update", "", "nodes", "", false},
	}
	user := "system:serviceaccount:" + tc.ns + ":" + sa
	for _, x := range qs {
		review := obj{
			"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
			"spec": obj{
				"user":               user,
				"groups":             []string{"system:serviceaccounts", "system:serviceaccounts:" + tc.ns, "system:authenticated"},
				"resourceAttributes": obj{"verb": x.verb, "group": x.group, "resource": x.resource, "namespace": x.ns},
			},
		}
		var out obj
		if err := c.Do(ctx, http.MethodPost, "/apis/authorization.k8s.io/v1/subjectaccessreviews", review, &out); err != nil {
			t.Fatal(err)
		}
		if got := m(out, "status")["allowed"] == true; got != x.want {
			where := x.ns
			if where == "" {
				where = "(cluster-wide)"
			}
			t.Errorf("%s may %s %s/%s in %s: %v, want %v", user, x.verb, x.group, x.resource, where, got, x.want)
		}
	}
}

// waitPodsRunning waits for the Deployment's pods to exist and be Running, and shows
// why not (the ReplicaSet's events say when the controller was refused) on timeout.
func waitPodsRunning(ctx context.Context, t *testing.T, c *kube.Cluster, ns string, dep obj, want int, sa string) {
	t.Helper()
	var sel []string
	for k, v := range m(dep, "spec", "selector", "matchLabels") {
		sel = append(sel, k+"="+v.(string))
	}
	sort.Strings(sel)
	path := "/api/v1/namespaces/" + ns + "/pods?labelSelector=" + url.QueryEscape(strings.Join(sel, ","))
	start := time.Now()
	deadline := start.Add(60 * time.Second)
	var last string
	for {
		var list obj
		if err := c.Do(ctx, http.MethodGet, path, nil, &list); err != nil {
			t.Fatal(err)
		}
		items, _ := list["items"].([]any)
		running := 0
		var phases []string
		for _, it := range items {
			p := it.(obj)
			phase := str(p, "status", "phase")
			phases = append(phases, str(p, "metadata", "name")+"="+phase)
			if got := str(p, "spec", "serviceAccountName"); got != sa {
				t.Fatalf("pod %s runs as %q, want %q", str(p, "metadata", "name"), got, sa)
			}
			if phase == "Running" {
				running++
			}
		}
		last = strings.Join(phases, ", ")
		if running >= want {
			t.Logf("%d pod(s) Running after %v: %s", running, time.Since(start).Round(time.Millisecond), last)
			return
		}
		if time.Now().After(deadline) {
			var events obj
			_ = c.Do(ctx, http.MethodGet, "/api/v1/namespaces/"+ns+"/events", nil, &events)
			var msgs []string
			for _, e := range events["items"].([]any) {
				ev := e.(obj)
				msgs = append(msgs, fmt.Sprintf("%s %s: %v", str(ev, "involvedObject", "kind"), ev["reason"], ev["message"]))
			}
			t.Fatalf("%d of %d pods Running after %v (pods: %s)\nevents:\n  %s", running, want, time.Since(start).Round(time.Millisecond),
				last, strings.Join(msgs, "\n  "))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func createNamespace(ctx context.Context, t *testing.T, c *kube.Cluster, ns string) {
	t.Helper()
	body := obj{"apiVersion": "v1", "kind": "Namespace", "metadata": obj{"name": ns, "labels": obj{
		"pod-security.kubernetes.io/enforce":         "restricted",
		"pod-security.kubernetes.io/enforce-version": "latest",
		"pod-security.kubernetes.io/warn":            "restricted",
	}}}
	if err := c.Do(ctx, http.MethodPost, "/api/v1/namespaces", body, nil); err != nil {
		t.Fatal(err)
	}
	// A new namespace gets its default ServiceAccount a moment later; nothing here uses it,
	// but wait so the namespace is fully set up before pods are made in it.
	for start := time.Now(); ; time.Sleep(50 * time.Millisecond) {
		if err := c.Do(ctx, http.MethodGet, "/api/v1/namespaces/"+ns+"/serviceaccounts/default", nil, nil); err == nil {
			return
		} else if time.Since(start) > 30*time.Second {
			t.Fatalf("namespace %s: no default ServiceAccount: %v", ns, err)
		}
	}
}

// createSecret creates a Secret the values refer to, with every key the charts may read.
func createSecret(ctx context.Context, t *testing.T, c *kube.Cluster, ns, name string) {
	t.Helper()
	data := map[string]string{}
	for _, k := range []string{"enrollment-token", "url", "STREAMSPACE_KEK", "tls.crt", "tls.key"} {
		data[k] = "dGVzdA=="
	}
	body := obj{"apiVersion": "v1", "kind": "Secret", "metadata": obj{"name": name}, "data": data}
	if err := c.Do(ctx, http.MethodPost, "/api/v1/namespaces/"+ns+"/secrets", body, nil); err != nil {
		t.Fatal(err)
	}
}

// resource maps the kinds the charts render to their REST resource.
var resources = map[string]struct {
	plural     string
	namespaced bool
}{
	"Namespace":             {"namespaces", false},
	"ServiceAccount":        {"serviceaccounts", true},
	"Secret":                {"secrets", true},
	"ConfigMap":             {"configmaps", true},
	"Service":               {"services", true},
	"PersistentVolumeClaim": {"persistentvolumeclaims", true},
	"Deployment":            {"deployments", true},
	"Role":                  {"roles", true},
	"RoleBinding":           {"rolebindings", true},
	"ClusterRole":           {"clusterroles", false},
	"ClusterRoleBinding":    {"clusterrolebindings", false},
	"PodDisruptionBudget":   {"poddisruptionbudgets", true},
}

// doc is one rendered object: its YAML and the identity read from it.
type doc struct {
	apiVersion, kind, name, namespace string
	yaml                              []byte
}

func (d doc) namespaced() bool { return resources[d.kind].namespaced }

func (d doc) path() string {
	base := "/apis/" + d.apiVersion
	if d.apiVersion == "v1" {
		base = "/api/v1"
	}
	r := resources[d.kind]
	if r.namespaced {
		return base + "/namespaces/" + d.namespace + "/" + r.plural + "/" + d.name
	}
	return base + "/" + r.plural + "/" + d.name
}

// splitDocs splits helm's output into objects. It reads only the top-level apiVersion and
// kind and metadata's name and namespace (helm writes block-style YAML with two-space
// indentation); the apiserver parses the whole document.
func splitDocs(out string) ([]doc, error) {
	var docs []doc
	for _, part := range strings.Split("\n"+out, "\n---") {
		var d doc
		inMeta := false
		for _, line := range strings.Split(part, "\n") {
			switch {
			case strings.HasPrefix(line, "apiVersion:"):
				d.apiVersion = scalar(line)
			case strings.HasPrefix(line, "kind:"):
				d.kind = scalar(line)
			case line == "metadata:":
				inMeta = true
			case inMeta && strings.HasPrefix(line, "  name:"):
				d.name = scalar(line)
			case inMeta && strings.HasPrefix(line, "  namespace:"):
				d.namespace = scalar(line)
			case line != "" && line[0] != ' ' && line[0] != '#':
				inMeta = false
			}
		}
		if d.kind == "" && d.apiVersion == "" {
			continue // comments only
		}
		if d.kind == "" || d.apiVersion == "" || d.name == "" {
			return nil, fmt.Errorf("a rendered document lacks apiVersion, kind or metadata.name:\n%s", part)
		}
		if _, ok := resources[d.kind]; !ok {
			return nil, fmt.Errorf("the charts render a %s (%s); add it to the kind->resource table of this test", d.kind, d.apiVersion)
		}
		d.yaml = []byte(part)
		docs = append(docs, d)
	}
	if len(docs) == 0 {
		return nil, fmt.Errorf("helm rendered no objects")
	}
	return docs, nil
}

func scalar(line string) string {
	_, v, _ := strings.Cut(line, ":")
	v = strings.TrimSpace(v)
	if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
		v = v[1 : len(v)-1]
	}
	return v
}

// apply sends d with server-side apply, in dry run or for real, and returns the object
// the apiserver would store and its warnings.
func apply(ctx context.Context, c *kube.Cluster, d doc, dryRun bool) (obj, []string, error) {
	q := url.Values{"fieldManager": {fieldManager}}
	if dryRun {
		q.Set("dryRun", "All")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPatch, c.Server()+d.path()+"?"+q.Encode(), bytes.NewReader(d.yaml))
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Content-Type", "application/apply-patch+yaml")
	req.Header.Set("Accept", "application/json")
	resp, err := c.HTTPClient().Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode/100 != 2 {
		return nil, nil, fmt.Errorf("PATCH %s: %d: %s", d.path(), resp.StatusCode, b)
	}
	var out obj
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, nil, err
	}
	return out, resp.Header.Values("Warning"), nil
}

// helm runs the binary built by infra/dev/build-helm.sh.
type helm struct {
	t      *testing.T
	bin    string
	charts string
}

func (h *helm) run(args ...string) (string, error) {
	cmd := exec.Command(h.bin, args...)
	// A private home: no user repositories, plugins or registry logins leak in.
	home := h.t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"), "HELM_DATA_HOME="+filepath.Join(home, "data"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// buildHelm runs infra/dev/build-helm.sh (a no-op when the binary is cached) and returns
// the helm binary's path, the script's last line of output.
func buildHelm(root string) (string, error) {
	script := filepath.Join(root, "infra", "dev", "build-helm.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Stdout = &stdout
	// Progress of a cold build (minutes) shows while it runs.
	cmd.Stderr = io.MultiWriter(os.Stderr, &stderr)
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("cannot build helm with %s (it needs go and the Go module proxy; "+
			"STREAMSPACE_HELM_CACHE moves its cache): %v\n%s%s", script, err, stderr.String(), stdout.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	bin := lines[len(lines)-1]
	if st, err := os.Stat(bin); err != nil || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("%s printed %q, which is not an executable helm binary (%v)", script, bin, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		fmt.Fprintf(os.Stderr, "charts: helm built in %v\n", d.Round(time.Second))
	}
	return bin, nil
}

// repoRoot is the repository's root: two levels above this file, else found by walking
// up from the working directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	var cands []string
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		cands = append(cands, filepath.Join(filepath.Dir(file), "..", ".."))
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			cands = append(cands, d)
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	for _, c := range cands {
		if st, err := os.Stat(filepath.Join(c, "infra", "charts", "streamspace-agent", "Chart.yaml")); err == nil && !st.IsDir() {
			return filepath.Clean(c)
		}
	}
	t.Fatal("cannot find the repository root (infra/charts/streamspace-agent/Chart.yaml)")
	return ""
}

func testdataDir(t *testing.T) string {
	d, err := filepath.Abs("testdata")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// m walks nested maps; a missing step gives an empty map.
func m(o obj, path ...string) obj {
	for _, p := range path {
		next, _ := o[p].(obj)
		if next == nil {
			return obj{}
		}
		o = next
	}
	return o
}

func str(o obj, path ...string) string {
	if len(path) == 0 {
		return ""
	}
	s, _ := m(o, path[:len(path)-1]...)[path[len(path)-1]].(string)
	return s
}

func strs(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, x := range l {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}

func equalRules(a, b map[string][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w := slices.Clone(b[k])
		sort.Strings(w)
		if !slices.Equal(v, w) {
			return false
		}
	}
	return true
}

func kinds(applied map[string][]obj) string {
	var ks []string
	for k, v := range applied {
		ks = append(ks, fmt.Sprintf("%s×%d", k, len(v)))
	}
	sort.Strings(ks)
	return strings.Join(ks, ", ")
}
