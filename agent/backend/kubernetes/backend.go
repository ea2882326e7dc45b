package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"streamspace.dev/agent"
	"streamspace.dev/agent/backend/feed"
	"streamspace.dev/libs/wire"
)

// Config configures the backend. Client, Namespace and AgentID are required.
type Config struct {
	// Client talks to the cluster. Give its rest.Config a QPS and Burst that fit the
	// number of sessions (client-go's default of 5 QPS takes minutes to apply hundreds).
	Client k8s.Interface
	// Namespace holds every session object; the backend never leaves it except to read
	// Nodes for capacity, when allowed.
	Namespace string
	// AgentID is written to every object's AgentLabel and selects what this agent owns,
	// so two agents may share a namespace without touching each other's sessions.
	AgentID wire.AgentID

	// Resync is how often the backend repairs drift and deletes orphans on its own
	// (default 1m). It also runs soon after every Observe, which the reconcile loop calls
	// after each (re)connect.
	Resync time.Duration
	// InformerResync is the informers' resync period, which re-derives every status
	// from the cache (default 10m).
	InformerResync time.Duration
	// Workers bounds the sessions applied in parallel within one Apply (default 16).
	Workers int

	// RetainHomes keeps a deleted session's home volume (released from the session,
	// without our managed-by label, so nothing of the agent touches it again). A claim
	// annotated streamspace.dev/retain=true is kept whatever this says.
	RetainHomes bool
	// StorageClass is the home volumes' class; empty uses the cluster's default.
	StorageClass string

	// Resolver turns a session's endpoint facts into an address to dial, for the Running
	// probe and DialSession (default DefaultResolver).
	Resolver Resolver
	// Dial connects to an address (default a net.Dialer).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// ProbeTimeout bounds one probe dial (default 2s); ProbeInterval is the first pause
	// between probes of an endpoint that does not answer yet, doubling to 5s (default
	// 200ms).
	ProbeTimeout, ProbeInterval time.Duration
	// CrashLoopRestarts is how many restarts in CrashLoopBackOff make a session Failed
	// rather than Starting (default 3): one crash is often a blip, and Failed is final
	// for the control plane.
	CrashLoopRestarts int32

	// FallbackCapacity is reported as allocatable when the agent may read neither Nodes
	// nor a ResourceQuota; without it capacity is unknown and reported as zero.
	FallbackCapacity wire.Capacity
	// MaxSessions is the agent's own session limit, reported in Capacity; 0 means none.
	MaxSessions int
	// CapacityTTL is how long a computed capacity is reused (default 10s): Hello and
	// every heartbeat ask, and listing Nodes that often is waste.
	CapacityTTL time.Duration

	// Log receives the backend's logs (default slog.Default()).
	Log *slog.Logger
	// Now stamps statuses (default time.Now).
	Now func() time.Time
}

// Backend is the Kubernetes backend. Create it with New, then Start it.
type Backend struct {
	cfg      Config
	client   k8s.Interface
	ns       string
	agent    string // AgentLabel value
	selector string

	factory informers.SharedInformerFactory
	roots   cache.SharedIndexInformer
	deps    cache.SharedIndexInformer
	pods    cache.SharedIndexInformer
	svcs    cache.SharedIndexInformer
	slices  cache.SharedIndexInformer
	pvcs    cache.SharedIndexInformer

	// statusQ holds session labels whose status must be derived again.
	statusQ workqueue.TypedInterface[string]
	// repairQ holds session labels to check for drift and repair, rate limited per
	// session so that a fight with another controller cannot spin.
	repairQ workqueue.TypedRateLimitingInterface[string]

	locks [64]sync.Mutex // per-session serialisation of ensure, remove and repair

	mu       sync.Mutex
	status   map[string]wire.SessionStatus // last emitted, by session label
	applyErr map[string]error              // last failed ensure, by session label
	ensured  map[string]time.Time          // end of the last successful ensure, by session label
	depGen   map[string]int64              // generation of the Deployment we last wrote
	inflight map[string]int                // ensures running now, by session label
	probes   map[string]*probe
	watchers feed.Feed

	synced    atomic.Bool
	kick      chan struct{}
	lastKick  atomic.Int64
	probeSem  chan struct{}
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	startOnce sync.Once

	specMu sync.Mutex
	specs  map[string]cachedSpec // by root name

	capMu  sync.Mutex
	capAt  time.Time
	capVal wire.Capacity
	capSrc string
}

var (
	_ agent.Backend       = (*Backend)(nil)
	_ agent.SessionDialer = (*Backend)(nil)
)

// sessionIndex indexes every informer by SessionLabel.
const sessionIndex = "session"

// New checks cfg and builds the backend and its informers; nothing talks to the cluster
// until Start.
func New(cfg Config) (*Backend, error) {
	if cfg.Client == nil || cfg.Namespace == "" || cfg.AgentID == "" {
		return nil, errors.New("kubernetes backend: Client, Namespace and AgentID are required")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.Resync, time.Minute)
	def(&cfg.InformerResync, 10*time.Minute)
	def(&cfg.ProbeTimeout, 2*time.Second)
	def(&cfg.ProbeInterval, 200*time.Millisecond)
	def(&cfg.CapacityTTL, 10*time.Second)
	if cfg.Workers <= 0 {
		cfg.Workers = 16
	}
	if cfg.CrashLoopRestarts <= 0 {
		cfg.CrashLoopRestarts = 3
	}
	if cfg.Resolver == nil {
		cfg.Resolver = DefaultResolver
	}
	if cfg.Dial == nil {
		cfg.Dial = (&net.Dialer{}).DialContext
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	b := &Backend{
		cfg:      cfg,
		client:   cfg.Client,
		ns:       cfg.Namespace,
		agent:    labelFor(string(cfg.AgentID)),
		statusQ:  workqueue.NewTyped[string](),
		repairQ:  workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[string](200*time.Millisecond, time.Minute)),
		status:   map[string]wire.SessionStatus{},
		applyErr: map[string]error{},
		ensured:  map[string]time.Time{},
		depGen:   map[string]int64{},
		inflight: map[string]int{},
		probes:   map[string]*probe{},
		specs:    map[string]cachedSpec{},
		kick:     make(chan struct{}, 1),
		probeSem: make(chan struct{}, 32),
	}
	b.cfg.Log = cfg.Log.With("backend", "kubernetes", "namespace", cfg.Namespace)
	b.selector = ManagedByLabel + "=" + ManagedByValue + "," + AgentLabel + "=" + b.agent
	b.factory = informers.NewSharedInformerFactoryWithOptions(cfg.Client, cfg.InformerResync,
		informers.WithNamespace(cfg.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = b.selector }),
		// managedFields are most of an applied object's bytes and the backend never
		// reads them: dropping them keeps the caches of hundreds of sessions small.
		informers.WithTransform(func(obj any) (any, error) {
			if m, err := meta.Accessor(obj); err == nil {
				m.SetManagedFields(nil)
			}
			return obj, nil
		}),
	)
	b.roots = b.factory.Core().V1().ConfigMaps().Informer()
	b.deps = b.factory.Apps().V1().Deployments().Informer()
	b.pods = b.factory.Core().V1().Pods().Informer()
	b.svcs = b.factory.Core().V1().Services().Informer()
	b.slices = b.factory.Discovery().V1().EndpointSlices().Informer()
	b.pvcs = b.factory.Core().V1().PersistentVolumeClaims().Informer()
	for _, inf := range b.informers() {
		if err := inf.AddIndexers(cache.Indexers{sessionIndex: indexBySession}); err != nil {
			return nil, fmt.Errorf("kubernetes backend: adding index: %w", err)
		}
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    b.onEvent,
			UpdateFunc: func(_, obj any) { b.onEvent(obj) },
			DeleteFunc: b.onDelete,
		}); err != nil {
			return nil, fmt.Errorf("kubernetes backend: adding handler: %w", err)
		}
	}
	return b, nil
}

func (b *Backend) informers() []cache.SharedIndexInformer {
	return []cache.SharedIndexInformer{b.roots, b.deps, b.pods, b.svcs, b.slices, b.pvcs}
}

func indexBySession(obj any) ([]string, error) {
	m, err := meta.Accessor(obj)
	if err != nil {
		return nil, nil
	}
	if v := m.GetLabels()[SessionLabel]; v != "" {
		return []string{v}, nil
	}
	return nil, nil
}

// Start starts the informers and workers and returns at once: an apiserver that is
// down at boot must not keep the agent from connecting to the gateway, so methods that
// need the cache answer unavailable until the first list completes. ctx bounds
// everything the backend runs in the background; Close stops it too.
func (b *Backend) Start(ctx context.Context) error {
	started := false
	b.startOnce.Do(func() {
		started = true
		b.ctx, b.cancel = context.WithCancel(ctx)
		b.factory.Start(b.ctx.Done())
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			b.waitSynced()
		}()
		for range 2 {
			b.wg.Add(2)
			go func() { defer b.wg.Done(); b.statusWorker() }()
			go func() { defer b.wg.Done(); b.repairWorker() }()
		}
		b.wg.Add(1)
		go func() { defer b.wg.Done(); b.resyncLoop() }()
		go func() {
			<-b.ctx.Done()
			b.statusQ.ShutDown()
			b.repairQ.ShutDown()
		}()
	})
	if !started {
		return errors.New("kubernetes backend: already started")
	}
	return nil
}

func (b *Backend) waitSynced() {
	t0 := time.Now()
	var syncs []cache.InformerSynced
	for _, inf := range b.informers() {
		syncs = append(syncs, inf.HasSynced)
	}
	if !cache.WaitForCacheSync(b.ctx.Done(), syncs...) {
		return
	}
	b.synced.Store(true)
	b.cfg.Log.Info("informers synced", "took", time.Since(t0).Round(time.Millisecond), "sessions", len(b.roots.GetStore().ListKeys()))
	b.kickResync()
}

// WaitSynced blocks until the informers have listed the namespace or ctx is done.
func (b *Backend) WaitSynced(ctx context.Context) error {
	for !b.synced.Load() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// Close stops the informers and workers and waits for them.
func (b *Backend) Close() {
	if b.cancel == nil {
		return
	}
	b.cancel()
	b.factory.Shutdown()
	b.wg.Wait()
}

// Info implements agent.Backend.
func (b *Backend) Info(ctx context.Context) (agent.Info, error) {
	info := agent.Info{
		Capabilities: []string{"hibernate"},
		Cluster:      map[string]string{"platform": "kubernetes", "namespace": b.ns},
	}
	if v, err := b.client.Discovery().ServerVersion(); err == nil {
		info.Cluster["kubernetes_version"] = v.GitVersion
	} else {
		b.cfg.Log.WarnContext(ctx, "reading the Kubernetes version failed", "err", err)
	}
	b.capMu.Lock()
	if b.capSrc != "" {
		info.Cluster["capacity_source"] = b.capSrc
	}
	b.capMu.Unlock()
	return info, nil
}

// objects of one session, from the caches.
type objects struct {
	root   *corev1.ConfigMap
	dep    *appsv1.Deployment
	svc    *corev1.Service
	pvc    *corev1.PersistentVolumeClaim
	pods   []*corev1.Pod
	slices []*discoveryv1.EndpointSlice
}

func (o *objects) empty() bool {
	return o.root == nil && o.dep == nil && o.svc == nil && o.pvc == nil && len(o.pods) == 0
}

// lookup gathers a session's objects from the caches by its label. When the root is
// there, only children with the names derived from its session id count: an object
// that merely carries the label is an orphan for the sweep, not part of the session.
func (b *Backend) lookup(label string) objects {
	var o objects
	n := func(inf cache.SharedIndexInformer) []any {
		items, _ := inf.GetIndexer().ByIndex(sessionIndex, label)
		return items
	}
	for _, it := range n(b.roots) {
		if cm, ok := it.(*corev1.ConfigMap); ok && cm.Labels[ComponentLabel] == componentRoot {
			o.root = cm
		}
	}
	want := func(name, expected string) bool { return o.root == nil || name == expected }
	var nm names
	if o.root != nil {
		nm = namesFor(wire.SessionID(o.root.Annotations[SessionIDAnnotation]))
	}
	for _, it := range n(b.deps) {
		if d, ok := it.(*appsv1.Deployment); ok && want(d.Name, nm.deployment()) {
			o.dep = d
		}
	}
	for _, it := range n(b.svcs) {
		if s, ok := it.(*corev1.Service); ok && want(s.Name, nm.service()) {
			o.svc = s
		}
	}
	for _, it := range n(b.pvcs) {
		if c, ok := it.(*corev1.PersistentVolumeClaim); ok && want(c.Name, nm.pvc()) {
			o.pvc = c
		}
	}
	for _, it := range n(b.pods) {
		if p, ok := it.(*corev1.Pod); ok {
			o.pods = append(o.pods, p)
		}
	}
	for _, it := range n(b.slices) {
		if s, ok := it.(*discoveryv1.EndpointSlice); ok && (o.svc == nil || s.Labels[discoveryv1.LabelServiceName] == o.svc.Name) {
			o.slices = append(o.slices, s)
		}
	}
	return o
}
