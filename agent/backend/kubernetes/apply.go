package kubernetes

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strconv"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"

	"streamspace.dev/libs/wire"
)

// applyOpts forces ownership: a field someone else changed (kubectl scale) is ours to
// take back, which is what drift repair means.
var applyOpts = metav1.ApplyOptions{FieldManager: FieldManager, Force: true}

// lock serialises work on one session (apply, remove, repair) without one global lock.
func (b *Backend) lock(label string) func() {
	h := fnv.New32a()
	_, _ = h.Write([]byte(label))
	m := &b.locks[h.Sum32()%uint32(len(b.locks))]
	m.Lock()
	return m.Unlock
}

// Apply implements agent.Backend. Sessions are applied in parallel (Config.Workers), each
// with its own error; Apply returns once every object is written, not when the session
// runs.
func (b *Backend) Apply(ctx context.Context, set []wire.Assignment) []error {
	errs := make([]error, len(set))
	sem := make(chan struct{}, b.cfg.Workers)
	var wg sync.WaitGroup
	failed := false
	var fmu sync.Mutex
	for i, a := range set {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			var err error
			if a.Desired == wire.DesiredDeleted {
				err = b.Remove(ctx, a.SessionID)
			} else {
				err = b.ensure(ctx, a)
			}
			if err != nil {
				b.cfg.Log.WarnContext(ctx, "applying session failed", "session", a.SessionID, "generation", a.Generation, "desired", a.Desired, "err", err)
				fmu.Lock()
				errs[i], failed = err, true
				fmu.Unlock()
			}
		})
	}
	wg.Wait()
	if !failed {
		return nil
	}
	return errs
}

// ensure writes every object of one session to match a.
func (b *Backend) ensure(ctx context.Context, a wire.Assignment) error {
	n := namesFor(a.SessionID)
	defer b.lock(n.label)()
	return b.ensureHeld(ctx, a, n)
}

// busy marks a session's objects as being written by the agent itself, until the
// returned func: the events this causes must not look like drift to the repair worker,
// however long a loaded apiserver takes.
func (b *Backend) busy(label string) func() {
	b.mu.Lock()
	b.inflight[label]++
	b.mu.Unlock()
	return func() {
		b.mu.Lock()
		if b.inflight[label]--; b.inflight[label] <= 0 {
			delete(b.inflight, label)
		}
		b.mu.Unlock()
	}
}

// ensureHeld is ensure with the session's lock held, and records the outcome.
func (b *Backend) ensureHeld(ctx context.Context, a wire.Assignment, n names) error {
	done := b.busy(n.label)
	err := b.ensureLocked(ctx, a, n)
	done()
	b.mu.Lock()
	if err != nil {
		b.applyErr[n.label] = err
	} else {
		delete(b.applyErr, n.label)
		b.ensured[n.label] = b.cfg.Now()
	}
	b.mu.Unlock()
	b.statusQ.Add(n.label)
	return err
}

func (b *Backend) ensureLocked(ctx context.Context, a wire.Assignment, n names) error {
	if len(a.Spec) == 0 && a.Desired != wire.DesiredRunning {
		// Stop and hibernate may come without a spec: keep the one applied before.
		if prev, err := b.stored(ctx, n); err != nil {
			return err
		} else if prev != nil {
			a.Spec = prev.Spec
		}
	}
	var spec *resolved
	if len(a.Spec) > 0 || a.Desired == wire.DesiredRunning {
		var err error
		if spec, err = parseSpec(a.Spec); err != nil {
			return err
		}
	}
	root, err := b.applyRoot(ctx, a, n)
	if err != nil {
		return err
	}
	if spec == nil {
		// A session stopped before it ever had a spec: the root alone records it.
		return nil
	}
	owner := metav1ac.OwnerReference().WithAPIVersion("v1").WithKind("ConfigMap").
		WithName(root.Name).WithUID(root.UID).WithController(true)
	// The credentials, home and Service do not depend on each other: writing them in
	// parallel takes one round trip instead of three. The Deployment waits for them, so
	// that no pod ever starts without its Secret (a kubelet would report
	// CreateContainerConfigError, which is a failure here).
	var wg sync.WaitGroup
	var errs [3]error
	wg.Go(func() { errs[0] = b.ensureSecret(ctx, a, n, root) })
	if spec.Home != nil {
		wg.Go(func() {
			pvc := corev1ac.PersistentVolumeClaim(n.pvc(), b.ns).
				WithLabels(b.labels(n, string(a.TenantID), componentHome)).
				WithOwnerReferences(owner).
				WithSpec(b.pvcSpec(spec))
			if _, err := b.client.CoreV1().PersistentVolumeClaims(b.ns).Apply(ctx, pvc, applyOpts); err != nil {
				errs[1] = apiError(b.ns, "apply persistentvolumeclaims "+n.pvc(), err)
			}
		})
	}
	wg.Go(func() {
		svc := corev1ac.Service(n.service(), b.ns).
			WithLabels(b.labels(n, string(a.TenantID), componentStream)).
			WithOwnerReferences(owner).
			WithSpec(corev1ac.ServiceSpec().
				WithType(corev1.ServiceTypeClusterIP).
				WithSelector(b.selectorFor(n)).
				WithPorts(servicePorts(spec)...))
		if _, err := b.client.CoreV1().Services(b.ns).Apply(ctx, svc, applyOpts); err != nil {
			errs[2] = apiError(b.ns, "apply services "+n.service(), err)
		}
	})
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	dep, err := b.client.AppsV1().Deployments(b.ns).Apply(ctx, b.deployment(a, n, spec, owner), applyOpts)
	if err != nil {
		return apiError(b.ns, "apply deployments "+n.deployment(), err)
	}
	b.mu.Lock()
	b.depGen[n.label] = dep.Generation
	b.mu.Unlock()
	return nil
}

// stored returns the assignment recorded on a session's root, or nil without a root.
func (b *Backend) stored(ctx context.Context, n names) (*wire.Assignment, error) {
	var cm *corev1.ConfigMap
	if obj, ok, _ := b.roots.GetIndexer().GetByKey(b.ns + "/" + n.root()); ok {
		cm, _ = obj.(*corev1.ConfigMap)
	}
	if cm == nil {
		// The cache may lag a root written a moment ago; ask the apiserver.
		got, err := b.client.CoreV1().ConfigMaps(b.ns).Get(ctx, n.root(), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		if err != nil {
			return nil, apiError(b.ns, "get configmaps "+n.root(), err)
		}
		cm = got
	}
	return decodeStored(cm)
}

func decodeStored(cm *corev1.ConfigMap) (*wire.Assignment, error) {
	var a wire.Assignment
	if err := json.Unmarshal([]byte(cm.Data[assignmentKey]), &a); err != nil {
		return nil, fmt.Errorf("kubernetes: root %s holds no readable assignment: %w", cm.Name, err)
	}
	return &a, nil
}

func (b *Backend) labels(n names, tenant, component string) map[string]string {
	return map[string]string{
		ManagedByLabel:           ManagedByValue,
		AgentLabel:               b.agent,
		SessionLabel:             n.label,
		TenantLabel:              labelFor(tenant),
		ComponentLabel:           component,
		"app.kubernetes.io/name": "streamspace-session",
	}
}

// selectorFor selects a session's pods. It leaves out the tenant and component so that
// it never has to change: a Deployment's selector is immutable.
func (b *Backend) selectorFor(n names) map[string]string {
	return map[string]string{ManagedByLabel: ManagedByValue, AgentLabel: b.agent, SessionLabel: n.label}
}

func (b *Backend) applyRoot(ctx context.Context, a wire.Assignment, n names) (*corev1.ConfigMap, error) {
	data, err := json.Marshal(a)
	if err != nil {
		return nil, fmt.Errorf("encoding assignment: %w", err)
	}
	cm := corev1ac.ConfigMap(n.root(), b.ns).
		WithLabels(b.labels(n, string(a.TenantID), componentRoot)).
		WithAnnotations(map[string]string{
			SessionIDAnnotation:  string(a.SessionID),
			GenerationAnnotation: strconv.FormatInt(a.Generation, 10),
			DesiredAnnotation:    string(a.Desired),
		}).
		WithData(map[string]string{assignmentKey: string(data)})
	root, err := b.client.CoreV1().ConfigMaps(b.ns).Apply(ctx, cm, applyOpts)
	if err != nil {
		return nil, apiError(b.ns, "apply configmaps "+n.root(), err)
	}
	if root.DeletionTimestamp != nil {
		// Applying to a root on its way out would be lost with it when it goes.
		return nil, &wire.Error{Code: wire.CodeUnavailable, Message: "kubernetes: session " + string(a.SessionID) + " is still being deleted", RetryAfter: time.Second}
	}
	return root, nil
}

// ensureSecret creates the credentials once. It is never re-applied: the password must
// stay what the running pod was started with, and server-side apply of generated data
// would need it read back anyway. Create comes first because a new session is the
// common case; "already exists" is success.
func (b *Backend) ensureSecret(ctx context.Context, a wire.Assignment, n names, root *corev1.ConfigMap) error {
	var pw [18]byte
	_, _ = rand.Read(pw[:])
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:      n.secret(),
			Namespace: b.ns,
			Labels:    b.labels(n, string(a.TenantID), componentCreds),
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "ConfigMap", Name: root.Name, UID: root.UID,
				Controller: new(true)}},
		},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{passwordKey: []byte(base64.RawURLEncoding.EncodeToString(pw[:]))},
	}
	_, err := b.client.CoreV1().Secrets(b.ns).Create(ctx, s, metav1.CreateOptions{FieldManager: FieldManager})
	switch {
	case err == nil, apierrors.IsAlreadyExists(err):
		return nil
	case apierrors.IsForbidden(err):
		// A Role without create may still face a Secret made earlier (or by an operator):
		// only a missing Secret is a failure.
		if _, gerr := b.client.CoreV1().Secrets(b.ns).Get(ctx, n.secret(), metav1.GetOptions{}); gerr == nil {
			return nil
		}
	}
	return apiError(b.ns, "create secrets "+n.secret(), err)
}

func (b *Backend) pvcSpec(spec *resolved) *corev1ac.PersistentVolumeClaimSpecApplyConfiguration {
	s := corev1ac.PersistentVolumeClaimSpec().
		WithAccessModes(corev1.ReadWriteOnce).
		WithResources(corev1ac.VolumeResourceRequirements().
			WithRequests(corev1.ResourceList{corev1.ResourceStorage: spec.homeSize}))
	if b.cfg.StorageClass != "" {
		s.WithStorageClassName(b.cfg.StorageClass)
	}
	return s
}

// portName names a port for the Service and the container: a name is required once a
// Service has two ports, and the stream port is found by it.
func portName(p Port) string {
	switch {
	case p.Name != "":
		return p.Name
	case p.Stream != "":
		return "stream"
	default:
		return "port-" + strconv.Itoa(p.Port)
	}
}

func protocol(p Port) corev1.Protocol {
	if p.Protocol == "UDP" {
		return corev1.ProtocolUDP
	}
	return corev1.ProtocolTCP
}

func servicePorts(spec *resolved) []*corev1ac.ServicePortApplyConfiguration {
	var out []*corev1ac.ServicePortApplyConfiguration
	for _, p := range spec.Ports {
		out = append(out, corev1ac.ServicePort().
			WithName(portName(p)).
			WithPort(int32(p.Port)).
			WithTargetPort(intstr.FromInt32(int32(p.Port))).
			WithProtocol(protocol(p)))
	}
	return out
}

func (b *Backend) deployment(a wire.Assignment, n names, spec *resolved, owner *metav1ac.OwnerReferenceApplyConfiguration) *appsv1ac.DeploymentApplyConfiguration {
	replicas := int32(0)
	if a.Desired == wire.DesiredRunning {
		replicas = 1
	}
	c := corev1ac.Container().
		WithName(containerName).
		WithImage(spec.Image).
		WithReadinessProbe(corev1ac.Probe().
			WithTCPSocket(corev1ac.TCPSocketAction().WithPort(intstr.FromInt32(int32(spec.stream.Port)))).
			WithPeriodSeconds(2))
	for _, e := range spec.Env {
		c.WithEnv(corev1ac.EnvVar().WithName(e.Name).WithValue(e.Value))
	}
	c.WithEnv(corev1ac.EnvVar().WithName("VNC_PASSWORD").WithValueFrom(corev1ac.EnvVarSource().
		WithSecretKeyRef(corev1ac.SecretKeySelector().WithName(n.secret()).WithKey(passwordKey))))
	for _, p := range spec.Ports {
		c.WithPorts(corev1ac.ContainerPort().WithName(portName(p)).WithContainerPort(int32(p.Port)).WithProtocol(protocol(p)))
	}
	if len(spec.requests) > 0 || len(spec.limits) > 0 {
		r := corev1ac.ResourceRequirements()
		if len(spec.requests) > 0 {
			r.WithRequests(toList(spec.requests))
		}
		if len(spec.limits) > 0 {
			r.WithLimits(toList(spec.limits))
		}
		c.WithResources(r)
	}
	pod := corev1ac.PodSpec().
		// Sessions run customer-chosen images: they get no API credentials and no
		// environment leaking the namespace's other Services.
		WithAutomountServiceAccountToken(false).
		WithEnableServiceLinks(false).
		WithTerminationGracePeriodSeconds(10)
	if spec.Home != nil {
		c.WithVolumeMounts(corev1ac.VolumeMount().WithName(componentHome).WithMountPath(spec.Home.MountPath))
		pod.WithVolumes(corev1ac.Volume().WithName(componentHome).
			WithPersistentVolumeClaim(corev1ac.PersistentVolumeClaimVolumeSource().WithClaimName(n.pvc())))
	}
	for _, v := range spec.Volumes {
		c.WithVolumeMounts(corev1ac.VolumeMount().WithName(v.Name).WithMountPath(v.MountPath))
		pod.WithVolumes(corev1ac.Volume().WithName(v.Name).WithEmptyDir(corev1ac.EmptyDirVolumeSource()))
	}
	pod.WithContainers(c)
	return appsv1ac.Deployment(n.deployment(), b.ns).
		WithLabels(b.labels(n, string(a.TenantID), componentSession)).
		WithOwnerReferences(owner).
		WithSpec(appsv1ac.DeploymentSpec().
			WithReplicas(replicas).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(b.selectorFor(n))).
			// The home volume is ReadWriteOnce: an old pod must be gone before a new one
			// mounts it, which a rolling update would not wait for.
			WithStrategy(appsv1ac.DeploymentStrategy().WithType(appsv1.RecreateDeploymentStrategyType)).
			WithRevisionHistoryLimit(1).
			WithTemplate(corev1ac.PodTemplateSpec().
				WithLabels(b.labels(n, string(a.TenantID), componentSession)).
				WithSpec(pod)))
}

func toList(m map[string]resource.Quantity) corev1.ResourceList {
	out := corev1.ResourceList{}
	for k, v := range m {
		out[corev1.ResourceName(k)] = v
	}
	return out
}

// Remove implements agent.Backend. It deletes the session's objects by name, children
// first, rather than relying on the garbage collector alone: the session is gone when
// Remove returns, even where the collector is slow, and a child that lost its owner
// reference goes too. The home volume is first released from the session when it is to
// be retained.
func (b *Backend) Remove(ctx context.Context, id wire.SessionID) error {
	n := namesFor(id)
	defer b.lock(n.label)()
	// A Deployment seen gone while its root is still cached is Remove at work, not drift.
	done := b.busy(n.label)
	err := b.removeLocked(ctx, n)
	done()
	b.mu.Lock()
	if err != nil {
		b.applyErr[n.label] = err
	} else {
		delete(b.applyErr, n.label)
		delete(b.ensured, n.label)
		delete(b.depGen, n.label)
	}
	b.mu.Unlock()
	b.statusQ.Add(n.label)
	return err
}

func (b *Backend) removeLocked(ctx context.Context, n names) error {
	retained, err := b.releaseHome(ctx, n)
	if err != nil {
		return err
	}
	bg := metav1.DeletePropagationBackground
	del := func(kind, name string, f func(context.Context, string, metav1.DeleteOptions) error) error {
		if err := f(ctx, name, metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil && !apierrors.IsNotFound(err) {
			return apiError(b.ns, "delete "+kind+" "+name, err)
		}
		return nil
	}
	if err := del("deployments", n.deployment(), b.client.AppsV1().Deployments(b.ns).Delete); err != nil {
		return err
	}
	if err := del("services", n.service(), b.client.CoreV1().Services(b.ns).Delete); err != nil {
		return err
	}
	if err := del("secrets", n.secret(), b.client.CoreV1().Secrets(b.ns).Delete); err != nil {
		return err
	}
	if !retained {
		if err := del("persistentvolumeclaims", n.pvc(), b.client.CoreV1().PersistentVolumeClaims(b.ns).Delete); err != nil {
			return err
		}
	}
	// The root goes last: while it exists the session is still listed, so a failure
	// above is retried rather than forgotten.
	return del("configmaps", n.root(), b.client.CoreV1().ConfigMaps(b.ns).Delete)
}

// releaseHome detaches a home volume that must outlive its session: no owner (so the
// garbage collector keeps it) and no managed-by label (so the agent never sees it again).
// The session, tenant and retained labels stay for whoever restores it.
func (b *Backend) releaseHome(ctx context.Context, n names) (bool, error) {
	pvc, err := b.client.CoreV1().PersistentVolumeClaims(b.ns).Get(ctx, n.pvc(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, apiError(b.ns, "get persistentvolumeclaims "+n.pvc(), err)
	}
	if pvc.Labels[ManagedByLabel] != ManagedByValue || pvc.Labels[AgentLabel] != b.agent {
		return true, nil // not ours (any more): leave it alone
	}
	if !b.cfg.RetainHomes && pvc.Annotations[RetainAnnotation] != "true" {
		return false, nil
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{
		"ownerReferences": nil,
		"labels":          map[string]any{ManagedByLabel: nil, RetainedLabel: "true"},
		"resourceVersion": pvc.ResourceVersion,
	}})
	if _, err := b.client.CoreV1().PersistentVolumeClaims(b.ns).Patch(ctx, n.pvc(), types.MergePatchType, patch, metav1.PatchOptions{FieldManager: FieldManager}); err != nil {
		return false, apiError(b.ns, "release persistentvolumeclaims "+n.pvc(), err)
	}
	b.cfg.Log.InfoContext(ctx, "home volume retained", "pvc", n.pvc())
	return true, nil
}
