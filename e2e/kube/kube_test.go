package kube

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"streamspace.dev/e2e/harness"
)

// obj is a loosely typed Kubernetes object.
type obj = map[string]any

func skipShort(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Kubernetes control plane (a cold build takes minutes)")
	}
}

func TestCluster(t *testing.T) {
	skipShort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	// Build (or find) the binaries first so that the start below is timed warm.
	if _, err := ensureBinaries(ctx, Options{}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	c := ForTest(t, Options{})
	t.Logf("cluster started in %v (warm cache); kubeconfig %s", time.Since(t0).Round(time.Millisecond), c.Kubeconfig())

	if b, err := os.ReadFile(c.Kubeconfig()); err != nil || !strings.Contains(string(b), c.Server()) {
		t.Fatalf("kubeconfig %s does not name %s: %v", c.Kubeconfig(), c.Server(), err)
	}

	const ns = "e2e-kube"
	if err := c.Do(ctx, http.MethodPost, "/api/v1/namespaces", obj{
		"apiVersion": "v1", "kind": "Namespace", "metadata": obj{"name": ns},
	}, nil); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 30*time.Second, "default ServiceAccount", func() error {
		return c.Do(ctx, http.MethodGet, "/api/v1/namespaces/"+ns+"/serviceaccounts/default", nil, nil)
	})

	labels := obj{"app": "dummy"}
	if err := c.Do(ctx, http.MethodPost, "/apis/apps/v1/namespaces/"+ns+"/deployments", obj{
		"apiVersion": "apps/v1", "kind": "Deployment",
		"metadata": obj{"name": "dummy"},
		"spec": obj{
			"replicas": 1,
			"selector": obj{"matchLabels": labels},
			"template": obj{
				"metadata": obj{"labels": labels},
				"spec": obj{"containers": []obj{{
					"name": "main", "image": "registry.invalid/dummy:1",
					"resources": obj{"requests": obj{"cpu": "100m", "memory": "64Mi"}},
				}}},
			},
		},
	}, nil); err != nil {
		t.Fatal(err)
	}
	var podName string
	harness.Eventually(t, 60*time.Second, "Pod Running and Ready", func() error {
		var list struct {
			Items []struct {
				Metadata struct{ Name string }
				Spec     struct{ NodeName string }
				Status   struct {
					Phase      string
					Conditions []struct{ Type, Status string }
				}
			}
		}
		if err := c.Do(ctx, http.MethodGet, "/api/v1/namespaces/"+ns+"/pods?labelSelector=app%3Ddummy", nil, &list); err != nil {
			return err
		}
		if len(list.Items) != 1 {
			return fmt.Errorf("%d pods", len(list.Items))
		}
		p := list.Items[0]
		if p.Spec.NodeName != NodeName || p.Status.Phase != "Running" {
			return errors.New("pod on node " + p.Spec.NodeName + " in phase " + p.Status.Phase)
		}
		for _, cond := range p.Status.Conditions {
			if cond.Type == "Ready" && cond.Status == "True" {
				podName = p.Metadata.Name
				return nil
			}
		}
		return errors.New("pod not Ready")
	})

	if err := c.Do(ctx, http.MethodPost, "/api/v1/namespaces/"+ns+"/persistentvolumeclaims", obj{
		"apiVersion": "v1", "kind": "PersistentVolumeClaim",
		"metadata": obj{"name": "home"},
		"spec": obj{
			"accessModes": []string{"ReadWriteOnce"},
			"resources":   obj{"requests": obj{"storage": "1Gi"}},
		},
	}, nil); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 60*time.Second, "PVC Bound", func() error {
		var pvc struct {
			Spec   struct{ StorageClassName string }
			Status struct{ Phase string }
		}
		if err := c.Do(ctx, http.MethodGet, "/api/v1/namespaces/"+ns+"/persistentvolumeclaims/home", nil, &pvc); err != nil {
			return err
		}
		if pvc.Status.Phase != "Bound" {
			return errors.New("phase " + pvc.Status.Phase + ", class " + pvc.Spec.StorageClassName)
		}
		return nil
	})

	t1 := time.Now()
	if err := c.RestartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("apiserver restarted and ready in %v", time.Since(t1).Round(time.Millisecond))
	if err := c.Do(ctx, http.MethodGet, "/api/v1/namespaces/"+ns+"/pods/"+podName, nil, nil); err != nil {
		t.Fatalf("pod after restart: %v", err)
	}
	// The controllers and kwok reconnect: a scale-up after the restart is served.
	scale := obj{"apiVersion": "autoscaling/v1", "kind": "Scale",
		"metadata": obj{"name": "dummy", "namespace": ns}, "spec": obj{"replicas": 2}}
	if err := c.Do(ctx, http.MethodPut, "/apis/apps/v1/namespaces/"+ns+"/deployments/dummy/scale", scale, nil); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 60*time.Second, "2 ready replicas after the restart", func() error {
		var d struct{ Status struct{ ReadyReplicas int } }
		if err := c.Do(ctx, http.MethodGet, "/apis/apps/v1/namespaces/"+ns+"/deployments/dummy", nil, &d); err != nil {
			return err
		}
		if d.Status.ReadyReplicas != 2 {
			return fmt.Errorf("%d ready replicas", d.Status.ReadyReplicas)
		}
		return nil
	})

	// Stop leaves no process behind.
	pids := c.pids()
	t2 := time.Now()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("stopped in %v", time.Since(t2).Round(time.Millisecond))
	for name, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("%s (pid %d) still alive after Stop: %v", name, pid, err)
		}
	}
}

// TestParallelClusters starts two clusters at once: distinct dirs and ports.
func TestParallelClusters(t *testing.T) {
	skipShort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if _, err := ensureBinaries(ctx, Options{}); err != nil {
		t.Fatal(err)
	}
	var (
		wg sync.WaitGroup
		cs [2]*Cluster
		es [2]error
	)
	t0 := time.Now()
	for i := range cs {
		// The second one also proves ExtraArgs reach their process, after the defaults.
		opts := Options{Dir: t.TempDir()}
		if i == 1 {
			opts.ExtraArgs = map[string][]string{"kube-scheduler": {"--v=2"}}
		}
		wg.Go(func() { cs[i], es[i] = Start(ctx, opts) })
	}
	wg.Wait()
	for i, c := range cs {
		if es[i] != nil {
			t.Fatal(es[i])
		}
		t.Cleanup(func() { _ = c.Stop() })
	}
	t.Logf("two clusters started in %v", time.Since(t0).Round(time.Millisecond))
	if cs[0].Server() == cs[1].Server() || cs[0].Dir() == cs[1].Dir() {
		t.Fatalf("clusters share a server or dir: %s %s", cs[0].Server(), cs[1].Server())
	}
	for _, c := range cs {
		if err := c.Do(ctx, http.MethodGet, "/api/v1/nodes/"+NodeName, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range cs {
		header, _, _ := strings.Cut(tail(c.LogPath("kube-scheduler"), 1<<20), "\n")
		if has := strings.HasSuffix(header, " --v=1 --v=2"); has != (i == 1) {
			t.Errorf("cluster %d: kube-scheduler started as %q", i, header)
		}
	}
}

// TestBuildFailure checks that a failing build.sh gives a clear error.
func TestBuildFailure(t *testing.T) {
	script := t.TempDir() + "/build.sh"
	if err := os.WriteFile(script, []byte("echo 'go: module lookup disabled' >&2; exit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	_, err := Start(context.Background(), Options{BuildScript: script, BuildOutput: &out})
	if err == nil {
		t.Fatal("Start succeeded with a failing build")
	}
	for _, want := range []string{"cannot build the local Kubernetes control plane", script, "exit status 3", "STREAMSPACE_KUBE_BIN"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if !strings.Contains(out.String(), "module lookup disabled") {
		t.Errorf("build output not streamed: %q", out.String())
	}
}
