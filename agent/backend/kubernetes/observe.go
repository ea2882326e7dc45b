package kubernetes

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/tools/cache"

	"streamspace.dev/libs/wire"
)

// Reasons the backend reports besides the kubelet's own waiting reasons.
const (
	ReasonDeleting             = "Deleting"
	ReasonDeploymentMissing    = "DeploymentMissing"
	ReasonWaitingForPod        = "WaitingForPod"
	ReasonScheduling           = "Scheduling"
	ReasonUnschedulable        = "Unschedulable"
	ReasonContainersNotReady   = "ContainersNotReady"
	ReasonServiceMissing       = "ServiceMissing"
	ReasonEndpointNotReady     = "EndpointNotReady"
	ReasonEndpointNotAnswering = "EndpointNotAnswering"
	ReasonApplyFailed          = "ApplyFailed"
	ReasonPodFailed            = "PodFailed"
	ReasonContainerExited      = "ContainerExited"
)

// fatalWaiting are kubelet waiting reasons that do not clear without a new spec: the
// session is Failed at once, with the kubelet's reason.
var fatalWaiting = map[string]bool{
	"ImagePullBackOff":           true,
	"InvalidImageName":           true,
	"ErrImageNeverPull":          true,
	"CreateContainerConfigError": true,
	"CreateContainerError":       true,
}

func (b *Backend) onEvent(obj any) {
	m, err := meta.Accessor(obj)
	if err != nil {
		return
	}
	if l := m.GetLabels()[SessionLabel]; l != "" {
		b.statusQ.Add(l)
	}
}

func (b *Backend) onDelete(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	b.onEvent(obj)
}

func (b *Backend) statusWorker() {
	for {
		label, quit := b.statusQ.Get()
		if quit {
			return
		}
		b.refresh(label)
		b.statusQ.Done(label)
	}
}

// refresh derives one session's status from the caches and reports it if it changed.
func (b *Backend) refresh(label string) {
	o := b.lookup(label)
	b.mu.Lock()
	prev, had := b.status[label]
	applyErr := b.applyErr[label]
	b.mu.Unlock()
	if o.root == nil {
		b.dropProbe(label)
		if !had {
			return // children without a root are orphans for the sweep, not a session
		}
		if !o.empty() {
			b.emit(label, wire.SessionStatus{SessionID: prev.SessionID, Phase: wire.PhaseStopping, Reason: ReasonDeleting,
				ObservedGeneration: prev.ObservedGeneration})
			return
		}
		b.emit(label, wire.SessionStatus{SessionID: prev.SessionID, Phase: wire.PhaseDeleted, ObservedGeneration: prev.ObservedGeneration})
		return
	}
	st, target := b.derive(o, applyErr)
	if target == nil {
		b.dropProbe(label)
	} else if ok, msg := b.probeState(label, *target); ok {
		st.Phase = wire.PhaseRunning
		st.Endpoint = &wire.Endpoint{Host: target.Service + "." + target.Namespace + ".svc", Port: target.Port, Protocol: target.Protocol}
	} else {
		st.Phase, st.Reason, st.Message = wire.PhaseStarting, ReasonEndpointNotAnswering, msg
	}
	b.emit(label, st)
	if b.drifted(label, o) {
		b.repairQ.AddRateLimited(label)
	}
}

// derive maps a session's objects to a phase. When the pod is Ready and the endpoint
// is published, it returns the probe target; the caller decides Running by the probe.
func (b *Backend) derive(o objects, applyErr error) (wire.SessionStatus, *Target) {
	id := wire.SessionID(o.root.Annotations[SessionIDAnnotation])
	gen, _ := strconv.ParseInt(o.root.Annotations[GenerationAnnotation], 10, 64)
	st := wire.SessionStatus{SessionID: id, ObservedGeneration: gen}
	set := func(p wire.Phase, reason, msg string) (wire.SessionStatus, *Target) {
		st.Phase, st.Reason, st.Message = p, reason, msg
		return st, nil
	}
	if o.root.DeletionTimestamp != nil {
		return set(wire.PhaseStopping, ReasonDeleting, "")
	}
	if applyErr != nil {
		we := wire.ErrorOf(applyErr)
		if we.Code == wire.CodeInternal {
			we.Message = applyErr.Error() // our own fault: the text is ours to show
		}
		if we.Permanent {
			return set(wire.PhaseFailed, reasonOf(we.Code), we.Message)
		}
		return set(wire.PhasePending, ReasonApplyFailed, we.Message)
	}
	switch wire.Desired(o.root.Annotations[DesiredAnnotation]) {
	case wire.DesiredHibernated:
		if o.running() {
			return set(wire.PhaseHibernating, "", "")
		}
		return set(wire.PhaseHibernated, "", "")
	case wire.DesiredStopped:
		if o.running() {
			return set(wire.PhaseStopping, "", "")
		}
		return set(wire.PhaseStopped, "", "")
	}
	if o.dep == nil {
		return set(wire.PhasePending, ReasonDeploymentMissing, "the Deployment is missing; the agent is recreating it")
	}
	pod := pickPod(o.pods)
	if pod == nil {
		for _, c := range o.dep.Status.Conditions {
			if c.Type == appsv1.DeploymentReplicaFailure && c.Status == corev1.ConditionTrue {
				return set(wire.PhasePending, c.Reason, c.Message)
			}
		}
		return set(wire.PhasePending, ReasonWaitingForPod, "")
	}
	restarts := int32(0)
	waiting := ""
	for _, cs := range slices.Concat(pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses) {
		restarts += cs.RestartCount
		w := cs.State.Waiting
		if w == nil {
			continue
		}
		switch {
		case fatalWaiting[w.Reason]:
			return set(wire.PhaseFailed, w.Reason, w.Message)
		case w.Reason == "CrashLoopBackOff" && cs.RestartCount >= b.cfg.CrashLoopRestarts:
			return set(wire.PhaseFailed, w.Reason, fmt.Sprintf("container %s restarted %d times: %s", cs.Name, cs.RestartCount, w.Message))
		case w.Reason != "":
			waiting = w.Reason
			st.Message = w.Message
		}
	}
	switch pod.Status.Phase {
	case corev1.PodFailed:
		return set(wire.PhaseFailed, cmp.Or(pod.Status.Reason, ReasonPodFailed), pod.Status.Message)
	case corev1.PodSucceeded:
		return set(wire.PhaseFailed, ReasonContainerExited, "the session container exited")
	}
	if c := podCondition(pod, corev1.PodScheduled); c != nil && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
		// Pending, not Failed: capacity may come (an autoscaler, a finished pod), and
		// Failed is final for the control plane.
		return set(wire.PhasePending, ReasonUnschedulable, c.Message)
	}
	if pod.Spec.NodeName == "" {
		return set(wire.PhasePending, ReasonScheduling, "")
	}
	if c := podCondition(pod, corev1.PodReady); c == nil || c.Status != corev1.ConditionTrue {
		return set(wire.PhaseStarting, cmp.Or(waiting, ReasonContainersNotReady), st.Message)
	}
	st.Message = ""
	if restarts > 0 {
		st.Message = fmt.Sprintf("the session container restarted %d times", restarts)
	}
	spec := b.specOf(o.root)
	if spec == nil {
		return set(wire.PhaseStarting, ReasonEndpointNotReady, "the root holds no readable spec")
	}
	if o.svc == nil {
		return set(wire.PhaseStarting, ReasonServiceMissing, "")
	}
	t := Target{SessionID: id, Namespace: b.ns, Service: o.svc.Name, ClusterIP: o.svc.Spec.ClusterIP,
		PortName: portName(spec.stream), Port: spec.stream.Port, TargetPort: spec.stream.Port, Protocol: string(cmp.Or(spec.stream.Stream, "vnc"))}
	for _, p := range o.svc.Spec.Ports {
		if p.Name == t.PortName {
			t.Port = int(p.Port)
		}
	}
	t.PodIP = readyAddress(o.slices, pod, t.PortName)
	if t.PodIP == "" {
		return set(wire.PhaseStarting, ReasonEndpointNotReady, "the pod is Ready but not yet a ready endpoint of its Service")
	}
	st.Phase = wire.PhaseStarting
	return st, &t
}

// running reports whether anything of the session still runs or is on its way out.
func (o *objects) running() bool {
	return len(o.pods) > 0 || (o.dep != nil && o.dep.Status.Replicas > 0)
}

func reasonOf(c wire.Code) string {
	switch c {
	case wire.CodeForbidden:
		return "Forbidden"
	case wire.CodeInvalid:
		return "InvalidSpec"
	case wire.CodeUnauthenticated:
		return "Unauthenticated"
	case wire.CodePreconditionFailed:
		return "NamespaceMissing"
	}
	return ReasonApplyFailed
}

// pickPod chooses the pod that speaks for the session: not being deleted, not finished
// when another one runs, newest first (a Recreate rollout leaves an old pod terminating
// while the new one starts).
func pickPod(pods []*corev1.Pod) *corev1.Pod {
	var best *corev1.Pod
	score := func(p *corev1.Pod) int {
		s := 0
		if p.DeletionTimestamp == nil {
			s += 4
		}
		if p.Status.Phase != corev1.PodFailed && p.Status.Phase != corev1.PodSucceeded {
			s += 2
		}
		return s
	}
	for _, p := range pods {
		if best == nil || score(p) > score(best) ||
			(score(p) == score(best) && p.CreationTimestamp.After(best.CreationTimestamp.Time)) {
			best = p
		}
	}
	if best != nil && best.DeletionTimestamp != nil {
		return nil
	}
	return best
}

func podCondition(p *corev1.Pod, t corev1.PodConditionType) *corev1.PodCondition {
	for i := range p.Status.Conditions {
		if p.Status.Conditions[i].Type == t {
			return &p.Status.Conditions[i]
		}
	}
	return nil
}

// readyAddress returns the pod's address among the ready endpoints of the Service's
// slices that carry port, or "".
func readyAddress(sl []*discoveryv1.EndpointSlice, pod *corev1.Pod, port string) string {
	for _, s := range sl {
		hasPort := false
		for _, p := range s.Ports {
			if p.Name != nil && *p.Name == port {
				hasPort = true
			}
		}
		if !hasPort {
			continue
		}
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			if e.TargetRef != nil && e.TargetRef.UID != pod.UID {
				continue
			}
			if len(e.Addresses) > 0 {
				return e.Addresses[0]
			}
		}
	}
	return ""
}

// specOf decodes the spec recorded on a root, caching it by resourceVersion: statuses
// are derived on every pod event, and decoding JSON each time would be the hot path.
func (b *Backend) specOf(root *corev1.ConfigMap) *resolved {
	b.specMu.Lock()
	defer b.specMu.Unlock()
	if c, ok := b.specs[root.Name]; ok && c.rv == root.ResourceVersion {
		return c.spec
	}
	var spec *resolved
	if a, err := decodeStored(root); err == nil && len(a.Spec) > 0 {
		spec, _ = parseSpec(a.Spec)
	}
	b.specs[root.Name] = cachedSpec{rv: root.ResourceVersion, spec: spec}
	return spec
}

type cachedSpec struct {
	rv   string
	spec *resolved
}

// emit records st as the session's status and reports it to every watcher, unless it
// says nothing new.
func (b *Backend) emit(label string, st wire.SessionStatus) {
	b.mu.Lock()
	defer b.mu.Unlock()
	prev, had := b.status[label]
	if had && sameStatus(prev, st) {
		return
	}
	now := b.cfg.Now().UTC()
	st.ObservedAt = now
	st.LastTransition = now
	if had && prev.Phase == st.Phase {
		st.LastTransition = prev.LastTransition
	}
	if st.Phase == wire.PhaseDeleted {
		delete(b.status, label)
		b.specMu.Lock()
		delete(b.specs, namesFor(st.SessionID).root())
		b.specMu.Unlock()
	} else {
		b.status[label] = st
	}
	b.watchers.Publish(st)
}

func sameStatus(a, b wire.SessionStatus) bool {
	if a.SessionID != b.SessionID || a.Phase != b.Phase || a.Reason != b.Reason || a.Message != b.Message ||
		a.ObservedGeneration != b.ObservedGeneration || (a.Endpoint == nil) != (b.Endpoint == nil) {
		return false
	}
	return a.Endpoint == nil || *a.Endpoint == *b.Endpoint
}

// Observe implements agent.Backend. It also schedules a repair pass: the reconcile
// loop observes after every (re)connect, which is when drift made while the agent was
// away must be repaired.
func (b *Backend) Observe(context.Context) ([]wire.SessionStatus, error) {
	if !b.synced.Load() {
		return nil, errNotSynced
	}
	b.kickResync()
	var out []wire.SessionStatus
	for _, obj := range b.roots.GetStore().List() {
		cm, ok := obj.(*corev1.ConfigMap)
		if !ok || cm.Labels[ComponentLabel] != componentRoot {
			continue
		}
		label := cm.Labels[SessionLabel]
		b.mu.Lock()
		st, ok := b.status[label]
		applyErr := b.applyErr[label]
		b.mu.Unlock()
		if !ok {
			// Not derived yet (the worker is behind): derive without probing, which can
			// only err towards Starting.
			st, _ = b.derive(b.lookup(label), applyErr)
			st.ObservedAt = b.cfg.Now().UTC()
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(x, y wire.SessionStatus) int { return cmp.Compare(x.SessionID, y.SessionID) })
	return out, nil
}

// Status returns the last status reported for session id, for tests and diagnostics.
func (b *Backend) Status(id wire.SessionID) (wire.SessionStatus, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st, ok := b.status[namesFor(id).label]
	return st, ok
}

// Watch implements agent.Backend. The channel stays open across apiserver outages:
// the informers re-list and re-watch by themselves, and every status that changed
// meanwhile is derived again and delivered.
func (b *Backend) Watch(ctx context.Context) (<-chan wire.SessionStatus, error) {
	if b.ctx == nil {
		return nil, errors.New("kubernetes backend: Watch before Start")
	}
	if err := b.ctx.Err(); err != nil {
		return nil, fmt.Errorf("kubernetes backend: closed: %w", err)
	}
	return b.watchers.Subscribe(ctx, b.ctx.Done()), nil
}

// probe is the state of the "endpoint answers" check of one session.
type probe struct {
	target Target
	ok     bool
	msg    string
	cancel context.CancelFunc
}

// probeState returns whether target answered, starting a probe when none runs for it.
func (b *Backend) probeState(label string, t Target) (bool, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.probes[label]
	if p != nil && p.target == t {
		return p.ok, p.msg
	}
	if p != nil {
		p.cancel()
	}
	ctx, cancel := context.WithCancel(b.ctx)
	p = &probe{target: t, cancel: cancel, msg: "waiting for the stream endpoint to answer"}
	b.probes[label] = p
	go b.runProbe(ctx, label, p)
	return false, p.msg
}

func (b *Backend) dropProbe(label string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if p := b.probes[label]; p != nil {
		p.cancel()
		delete(b.probes, label)
	}
}

// runProbe dials the target until it answers or the probe is superseded. A success is
// final for this target: after that only the pod's readiness decides.
func (b *Backend) runProbe(ctx context.Context, label string, p *probe) {
	delay := b.cfg.ProbeInterval
	for {
		select {
		case b.probeSem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		err := b.probeOnce(ctx, p.target)
		<-b.probeSem
		if ctx.Err() != nil {
			return
		}
		b.mu.Lock()
		if b.probes[label] != p {
			b.mu.Unlock()
			return
		}
		msg := ""
		if err != nil {
			msg = "the stream endpoint does not answer: " + err.Error()
		}
		changed := err == nil || p.msg != msg
		p.ok, p.msg = err == nil, msg
		b.mu.Unlock()
		if changed {
			b.statusQ.Add(label)
		}
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

func (b *Backend) probeOnce(ctx context.Context, t Target) error {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.ProbeTimeout)
	defer cancel()
	conn, err := b.dialTarget(ctx, t)
	if err != nil {
		return err
	}
	return conn.Close()
}
