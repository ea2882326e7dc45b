package kubernetes

import (
	"context"
	"errors"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"streamspace.dev/libs/wire"
)

// settle is how long after its own apply a session is not checked for drift: the
// caches lag the writes by a few milliseconds, and a half-seen session would look
// drifted and be applied twice for nothing.
const settle = 3 * time.Second

// kickResync asks for a resync pass soon, at most once every two seconds.
func (b *Backend) kickResync() {
	now := time.Now().UnixNano()
	if last := b.lastKick.Load(); now-last < int64(2*time.Second) || !b.lastKick.CompareAndSwap(last, now) {
		return
	}
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

func (b *Backend) resyncLoop() {
	t := time.NewTicker(b.cfg.Resync)
	defer t.Stop()
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-t.C:
		case <-b.kick:
		}
		if !b.synced.Load() {
			continue
		}
		if err := b.Resync(b.ctx); err != nil && b.ctx.Err() == nil {
			b.cfg.Log.Warn("resync incomplete", "err", err)
		}
	}
}

// Resync runs one repair pass now: every session whose objects drifted from its root
// is applied again (in the background, rate limited per session), and every object that
// carries our labels but belongs to no session is deleted. It runs periodically and
// after each reconnect on its own; tests call it to avoid waiting.
func (b *Backend) Resync(ctx context.Context) error {
	if !b.synced.Load() {
		return errNotSynced
	}
	for _, obj := range b.roots.GetStore().List() {
		if cm, ok := obj.(*corev1.ConfigMap); ok && cm.Labels[ComponentLabel] == componentRoot {
			label := cm.Labels[SessionLabel]
			if b.drifted(label, b.lookup(label)) {
				b.repairQ.Add(label)
			}
		}
	}
	var errs []error
	if err := b.checkSecrets(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := b.sweep(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// drifted reports whether a live session's objects differ from what its root says in
// the ways that matter and that other people cause: a missing object, a Deployment
// scaled or given another image.
//
// The caches lag the agent's own writes by a few milliseconds, and a half-seen session
// must not look drifted: a missing object counts only once the session's last ensure is
// settle old, and a Deployment only once the cache holds the generation the agent wrote
// (metadata.generation only grows, so an older one is the cache lagging, a newer one
// somebody else's change).
func (b *Backend) drifted(label string, o objects) bool {
	if o.root == nil || o.root.DeletionTimestamp != nil {
		return false
	}
	spec := b.specOf(o.root)
	if spec == nil {
		return false // a session stopped before it had a spec has only its root
	}
	b.mu.Lock()
	recent := b.cfg.Now().Sub(b.ensured[label]) < settle
	wrote := b.depGen[label]
	busy := b.inflight[label] > 0
	b.mu.Unlock()
	if busy {
		return false
	}
	if o.dep == nil || o.svc == nil || (spec.Home != nil && o.pvc == nil) {
		return !recent
	}
	if o.dep.Generation < wrote {
		return false
	}
	want := int32(0)
	if wire.Desired(o.root.Annotations[DesiredAnnotation]) == wire.DesiredRunning {
		want = 1
	}
	if o.dep.Spec.Replicas == nil || *o.dep.Spec.Replicas != want {
		// Right after an ensure that changed the desired state, the cache may still hold
		// the previous root or Deployment; only a settled session is judged.
		return !recent || o.dep.Generation > wrote
	}
	for _, c := range o.dep.Spec.Template.Spec.Containers {
		if c.Name == containerName && c.Image != spec.Image {
			return !recent || o.dep.Generation > wrote
		}
	}
	return false
}

func (b *Backend) repairWorker() {
	for {
		label, quit := b.repairQ.Get()
		if quit {
			return
		}
		if err := b.repair(b.ctx, label); err != nil && b.ctx.Err() == nil {
			b.cfg.Log.Warn("repairing session failed; will retry", "session_label", label, "err", err)
			b.repairQ.AddRateLimited(label)
		} else {
			b.repairQ.Forget(label)
		}
		b.repairQ.Done(label)
	}
}

// repair applies a session's recorded assignment again if it drifted.
func (b *Backend) repair(ctx context.Context, label string) error {
	o := b.lookup(label)
	if !b.drifted(label, o) {
		return nil
	}
	a, err := decodeStored(o.root)
	if err != nil {
		return err
	}
	return b.reapply(ctx, namesFor(a.SessionID), "repairing drift", "deployment_missing", o.dep == nil, "service_missing", o.svc == nil)
}

// reapply applies a session's recorded assignment again, as its root on the apiserver
// holds it once the session's lock is taken. A repair is decided from the caches, which
// may still hold the root of a session that Remove is deleting (its Deployment already
// gone looks like drift); applying that stale copy after Remove returns would bring the
// session back for good, since nothing assigns it any more. Reading the root under the
// lock sees what a Remove or Apply that held the lock meanwhile did.
func (b *Backend) reapply(ctx context.Context, n names, msg string, logArgs ...any) error {
	defer b.lock(n.label)()
	root, err := b.client.CoreV1().ConfigMaps(b.ns).Get(ctx, n.root(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) || (err == nil && root.DeletionTimestamp != nil) {
		return nil // removed meanwhile: nothing to repair
	}
	if err != nil {
		return apiError(b.ns, "get configmaps "+n.root(), err)
	}
	a, err := decodeStored(root)
	if err != nil {
		return err
	}
	b.cfg.Log.InfoContext(ctx, msg, append([]any{"session", a.SessionID}, logArgs...)...)
	return b.ensureHeld(ctx, *a, n)
}

// checkSecrets recreates missing credentials. Secrets are not cached (an informer would
// hold every secret's data in memory), so they are listed once per pass; an agent whose
// Role may not list secrets skips the check.
func (b *Backend) checkSecrets(ctx context.Context) error {
	list, err := b.client.CoreV1().Secrets(b.ns).List(ctx, metav1.ListOptions{LabelSelector: b.selector, ResourceVersion: "0"})
	if apierrors.IsForbidden(err) {
		return nil
	}
	if err != nil {
		return apiError(b.ns, "list secrets", err)
	}
	have := map[string]bool{}
	for i := range list.Items {
		s := &list.Items[i]
		have[s.Name] = true
		if err := b.sweepOne(ctx, s, "secrets", strings.TrimSuffix(s.Name, "-creds")); err != nil {
			return err
		}
	}
	for _, obj := range b.roots.GetStore().List() {
		cm, ok := obj.(*corev1.ConfigMap)
		if !ok || cm.Labels[ComponentLabel] != componentRoot || cm.DeletionTimestamp != nil {
			continue
		}
		n := namesFor(wire.SessionID(cm.Annotations[SessionIDAnnotation]))
		if have[n.secret()] || b.specOf(cm) == nil {
			continue
		}
		b.mu.Lock()
		recent := b.cfg.Now().Sub(b.ensured[n.label]) < settle || b.inflight[n.label] > 0
		b.mu.Unlock()
		if !recent {
			// Its error is recorded and reported with the session's status.
			_ = b.reapply(ctx, n, "repairing drift: credentials missing")
		}
	}
	return nil
}

// sweep deletes objects that carry our labels but belong to no session. A root missing
// from the cache is confirmed with the apiserver first, because the cache may not have
// seen a root that was just written.
func (b *Backend) sweep(ctx context.Context) error {
	var errs []error
	for _, obj := range b.deps.GetStore().List() {
		errs = append(errs, b.sweepOne(ctx, obj, "deployments", nameOf(obj)))
	}
	for _, obj := range b.svcs.GetStore().List() {
		errs = append(errs, b.sweepOne(ctx, obj, "services", nameOf(obj)))
	}
	for _, obj := range b.pvcs.GetStore().List() {
		errs = append(errs, b.sweepOne(ctx, obj, "persistentvolumeclaims", strings.TrimSuffix(nameOf(obj), "-home")))
	}
	return errors.Join(errs...)
}

func nameOf(obj any) string {
	if m, err := meta.Accessor(obj); err == nil {
		return m.GetName()
	}
	return ""
}

// sweepOne deletes obj (of resource kind) if neither the cache nor the apiserver holds
// the root it should belong to, named rootName.
func (b *Backend) sweepOne(ctx context.Context, obj any, kind, rootName string) error {
	m, err := meta.Accessor(obj)
	if err != nil || m.GetDeletionTimestamp() != nil {
		return nil
	}
	// Never touch what is not ours, even if a selector bug let it through.
	if l := m.GetLabels(); l[ManagedByLabel] != ManagedByValue || l[AgentLabel] != b.agent {
		return nil
	}
	label := m.GetLabels()[SessionLabel]
	if o := b.lookup(label); o.root != nil && o.root.Name == rootName {
		return nil
	}
	root, err := b.client.CoreV1().ConfigMaps(b.ns).Get(ctx, rootName, metav1.GetOptions{})
	switch {
	case err == nil && root.Labels[SessionLabel] == label && root.Labels[AgentLabel] == b.agent:
		return nil
	case err != nil && !apierrors.IsNotFound(err):
		return apiError(b.ns, "get configmaps "+rootName, err)
	}
	b.cfg.Log.InfoContext(ctx, "deleting orphan", "kind", kind, "name", m.GetName(), "session_label", label)
	bg := metav1.DeletePropagationBackground
	uid := m.GetUID()
	opts := metav1.DeleteOptions{PropagationPolicy: &bg, Preconditions: &metav1.Preconditions{UID: &uid}}
	switch kind {
	case "deployments":
		err = b.client.AppsV1().Deployments(b.ns).Delete(ctx, m.GetName(), opts)
	case "services":
		err = b.client.CoreV1().Services(b.ns).Delete(ctx, m.GetName(), opts)
	case "persistentvolumeclaims":
		err = b.client.CoreV1().PersistentVolumeClaims(b.ns).Delete(ctx, m.GetName(), opts)
	case "secrets":
		err = b.client.CoreV1().Secrets(b.ns).Delete(ctx, m.GetName(), opts)
	}
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return apiError(b.ns, "delete "+kind+" "+m.GetName(), err)
	}
	return nil
}
