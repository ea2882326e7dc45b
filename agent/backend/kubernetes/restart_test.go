package kubernetes_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"streamspace.dev/libs/poll"
	"streamspace.dev/libs/wire"
)

// TestAPIServerRestart stops the shared apiserver, so it does not run in parallel:
// Go runs every sequential test before releasing the parallel ones.
func TestAPIServerRestart(t *testing.T) {
	needCluster(t)
	c := adminClient(t)
	ns := newNamespace(t, c)
	b := newBackend(t, ns, newStreamListener(t), options{})
	w := collect(t, b)
	ctx := context.Background()
	s1, s2 := newSessionID(), newSessionID()
	applyOK(t, b, assignment(t, s1, 1, wire.DesiredRunning), assignment(t, s2, 1, wire.DesiredRunning))
	waitPhase(t, b, s1, wire.PhaseRunning, "")
	waitPhase(t, b, s2, wire.PhaseRunning, "")

	// While the apiserver is down an apply fails as retryable, and the backend keeps
	// answering from its caches.
	t0 := time.Now()
	cluster.StopAPIServer()
	t.Logf("apiserver stopped in %v", time.Since(t0).Round(time.Millisecond))
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	errs := b.Apply(actx, []wire.Assignment{{SessionID: s2, TenantID: testTenant, Generation: 2, Desired: wire.DesiredHibernated}})
	cancel()
	var we *wire.Error
	if len(errs) != 1 || !errors.As(errs[0], &we) || we.Permanent || we.Code != wire.CodeUnavailable {
		t.Errorf("apply while down: %v", errs)
	}
	if obs, err := b.Observe(ctx); err != nil || len(obs) != 2 {
		t.Errorf("observe while down: %v %v", obs, err)
	}
	t0 = time.Now()
	if err := cluster.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("apiserver ready again in %v", time.Since(t0).Round(time.Millisecond))

	// And a plain restart, as the brief's Cluster.RestartAPIServer does it.
	if err := cluster.RestartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}

	// Status flows again: the informers re-listed and re-watched on their own, on the
	// same Watch channel. A pod status written through the API involves only the
	// backend's informers; hibernation below also waits for the cluster's own
	// controllers, which back off the same way.
	t0 = time.Now()
	setWaiting(t, ns, sessionPod(t, ns, s1).Name, "ImagePullBackOff", "back-off pulling image", 0)
	waitPhase(t, b, s1, wire.PhaseFailed, "ImagePullBackOff")
	t.Logf("pod status seen %v after the apiserver was back", time.Since(t0).Round(time.Millisecond))
	// The Watch channel is delivered by its own goroutine: wait for it, but it must come.
	poll.UntilNil(t, 30*time.Second, "the watch to deliver wire.PhaseFailed", func() error {
		if ph := w.phases(s1); !slices.Contains(ph, wire.PhaseFailed) {
			return fmt.Errorf("watch saw %v", ph)
		}
		return nil
	})
	t0 = time.Now()
	poll.UntilNil(t, 60*time.Second, "apply after restart", func() error {
		if errs := b.Apply(ctx, []wire.Assignment{{SessionID: s2, TenantID: testTenant, Generation: 2, Desired: wire.DesiredHibernated}}); errs != nil {
			return errs[0]
		}
		return nil
	})
	waitPhase(t, b, s2, wire.PhaseHibernated, "")
	t.Logf("hibernation seen %v after the apiserver was back", time.Since(t0).Round(time.Millisecond))
	// The Watch channel is delivered by its own goroutine: wait for it, but it must come.
	poll.UntilNil(t, 30*time.Second, "the watch to deliver wire.PhaseHibernated", func() error {
		if ph := w.phases(s2); !slices.Contains(ph, wire.PhaseHibernated) {
			return fmt.Errorf("watch saw %v", ph)
		}
		return nil
	})
	// Changes made by others are seen too: the Deployment watch is live again.
	name := "ss-" + dashed(s1)
	if err := c.AppsV1().Deployments(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll.UntilNil(t, 30*time.Second, "deployment repaired after restart", func() error {
		d, err := c.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.CreationTimestamp.Time.Before(t0.Add(-time.Second)) {
			return fmt.Errorf("old deployment")
		}
		return nil
	})
	waitPhase(t, b, s1, wire.PhaseRunning, "")
}
