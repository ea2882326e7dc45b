package kubernetes

import (
	"context"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"streamspace.dev/libs/wire"
)

// Capacity sources, reported in Info as capacity_source.
const (
	CapacityNodes    = "nodes"
	CapacityQuota    = "quota"
	CapacityFallback = "config"
	CapacityUnknown  = "unknown"
)

// Capacity implements agent.Backend. Used counts the requests of this agent's session
// pods (what the scheduler places by). Allocatable comes from the best source the agent
// may read:
//   - nodes (the optional ClusterRole): the Ready, schedulable nodes' allocatable, minus
//     the requests of every other pod on them when pods may be listed cluster-wide;
//   - else the namespace's ResourceQuota: its hard requests minus what other pods in
//     the namespace use;
//   - else Config.FallbackCapacity, else zero ("unknown").
//
// The answer is cached for Config.CapacityTTL; the session count and used resources
// are always fresh from the informers.
func (b *Backend) Capacity(ctx context.Context) (wire.Capacity, error) {
	if !b.synced.Load() {
		return wire.Capacity{}, errNotSynced
	}
	usedCPU, usedMem, sessions := b.sessionUsage()
	b.capMu.Lock()
	defer b.capMu.Unlock()
	if b.capSrc == "" || b.cfg.Now().Sub(b.capAt) >= b.cfg.CapacityTTL {
		c, src := b.allocatable(ctx, usedCPU, usedMem)
		if src != b.capSrc {
			b.cfg.Log.InfoContext(ctx, "capacity source", "source", src)
		}
		b.capVal, b.capSrc, b.capAt = c, src, b.cfg.Now()
	}
	c := b.capVal
	c.CPUUsedMillis, c.MemoryUsedBytes, c.Sessions, c.MaxSessions = usedCPU, usedMem, sessions, b.cfg.MaxSessions
	return c, nil
}

// sessionUsage sums the requests of the session pods that hold resources.
func (b *Backend) sessionUsage() (cpu, mem int64, sessions int) {
	for _, obj := range b.pods.GetStore().List() {
		p, ok := obj.(*corev1.Pod)
		if !ok || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		c, m := podRequests(p)
		cpu, mem = cpu+c, mem+m
		sessions++
	}
	return cpu, mem, sessions
}

func podRequests(p *corev1.Pod) (cpu, mem int64) {
	for _, c := range p.Spec.Containers {
		cpu += c.Resources.Requests.Cpu().MilliValue()
		mem += c.Resources.Requests.Memory().Value()
	}
	return cpu, mem
}

func (b *Backend) allowed(ctx context.Context, verb, resource, ns string) bool {
	r, err := b.client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authzv1.SelfSubjectAccessReview{
		Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authzv1.ResourceAttributes{
			Verb: verb, Resource: resource, Namespace: ns,
		}},
	}, metav1.CreateOptions{})
	return err == nil && r.Status.Allowed
}

func (b *Backend) allocatable(ctx context.Context, usedCPU, usedMem int64) (wire.Capacity, string) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// ResourceVersion "0" reads from the apiserver's watch cache: cheap, and staleness
	// of a second does not matter for placement.
	nodes, err := b.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{ResourceVersion: "0"})
	if err == nil {
		var c wire.Capacity
		ready := map[string]bool{}
		for _, n := range nodes.Items {
			if n.Spec.Unschedulable || !nodeReady(&n) {
				continue
			}
			ready[n.Name] = true
			c.CPUAllocatableMillis += n.Status.Allocatable.Cpu().MilliValue()
			c.MemoryAllocatableBytes += n.Status.Allocatable.Memory().Value()
		}
		if b.allowed(ctx, "list", "pods", "") {
			pods, err := b.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{ResourceVersion: "0",
				FieldSelector: fields.AndSelectors(fields.OneTermNotEqualSelector("status.phase", string(corev1.PodSucceeded)),
					fields.OneTermNotEqualSelector("status.phase", string(corev1.PodFailed))).String()})
			if err == nil {
				for i := range pods.Items {
					p := &pods.Items[i]
					if !ready[p.Spec.NodeName] || (p.Namespace == b.ns && p.Labels[ManagedByLabel] == ManagedByValue && p.Labels[AgentLabel] == b.agent) {
						continue
					}
					cpu, mem := podRequests(p)
					c.CPUAllocatableMillis -= cpu
					c.MemoryAllocatableBytes -= mem
				}
			}
		}
		return c, CapacityNodes
	}
	if !apierrors.IsForbidden(err) {
		b.cfg.Log.WarnContext(ctx, "listing nodes for capacity failed", "err", err)
	}
	quotas, err := b.client.CoreV1().ResourceQuotas(b.ns).List(ctx, metav1.ListOptions{ResourceVersion: "0"})
	if err == nil && len(quotas.Items) > 0 {
		// Several quotas all apply: the tightest wins.
		var c wire.Capacity
		first := true
		for _, q := range quotas.Items {
			cpu, mem, ok := quotaFree(&q, usedCPU, usedMem)
			if !ok {
				continue
			}
			if first || cpu < c.CPUAllocatableMillis {
				c.CPUAllocatableMillis = cpu
			}
			if first || mem < c.MemoryAllocatableBytes {
				c.MemoryAllocatableBytes = mem
			}
			first = false
		}
		if !first {
			return c, CapacityQuota
		}
	}
	if b.cfg.FallbackCapacity != (wire.Capacity{}) {
		return b.cfg.FallbackCapacity, CapacityFallback
	}
	return wire.Capacity{}, CapacityUnknown
}

// quotaFree returns what a quota allows the sessions: its hard requests minus what
// everything else in the namespace uses (the quota's used minus the sessions' own).
func quotaFree(q *corev1.ResourceQuota, sessCPU, sessMem int64) (cpu, mem int64, ok bool) {
	hardCPU, okC := firstOf(q.Status.Hard, corev1.ResourceRequestsCPU, corev1.ResourceCPU)
	hardMem, okM := firstOf(q.Status.Hard, corev1.ResourceRequestsMemory, corev1.ResourceMemory)
	if !okC || !okM {
		return 0, 0, false
	}
	usedCPU, _ := firstOf(q.Status.Used, corev1.ResourceRequestsCPU, corev1.ResourceCPU)
	usedMem, _ := firstOf(q.Status.Used, corev1.ResourceRequestsMemory, corev1.ResourceMemory)
	return hardCPU.MilliValue() - max(usedCPU.MilliValue()-sessCPU, 0),
		hardMem.Value() - max(usedMem.Value()-sessMem, 0), true
}

type quantity interface {
	MilliValue() int64
	Value() int64
}

func firstOf(l corev1.ResourceList, names ...corev1.ResourceName) (quantity, bool) {
	for _, n := range names {
		if q, ok := l[n]; ok {
			return &q, true
		}
	}
	var zero zeroQuantity
	return zero, false
}

type zeroQuantity struct{}

func (zeroQuantity) MilliValue() int64 { return 0 }
func (zeroQuantity) Value() int64      { return 0 }

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
