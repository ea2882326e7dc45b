package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"streamspace.dev/agent"
	"streamspace.dev/agent/backend/kubernetes"
	"streamspace.dev/agent/backend/memory"
	"streamspace.dev/libs/wire"
)

// runningBackend is a started backend that Run closes when it returns.
type runningBackend interface {
	agent.Backend
	Close()
}

// saNamespace is where a pod finds its own namespace.
const saNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// newBackend builds and starts the backend cfg selects, for agent id.
func newBackend(ctx context.Context, cfg Config, id wire.AgentID, log *slog.Logger) (runningBackend, error) {
	if cfg.Backend != "kubernetes" {
		return memory.New(memory.Config{
			StartDelay: 500 * time.Millisecond, RunDelay: time.Second, StopDelay: 500 * time.Millisecond,
			Allocatable:         wire.Capacity{CPUAllocatableMillis: 8000, MemoryAllocatableBytes: 16 << 30, MaxSessions: 20},
			PerSessionCPUMillis: 500, PerSessionMemoryBytes: 1 << 30,
		}), nil
	}
	// client-go logs through klog; send it to the agent's JSON log instead of stderr text.
	klog.SetSlogLogger(log.With("component", "client-go"))
	ns := cfg.Namespace
	if ns == "" {
		b, err := os.ReadFile(saNamespace)
		if err != nil {
			return nil, errors.New("-namespace is required outside a pod")
		}
		ns = strings.TrimSpace(string(b))
	}
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	rc.QPS, rc.Burst = float32(cfg.KubeQPS), cfg.KubeBurst
	rc.UserAgent = "streamspace-agent/" + Version
	client, err := k8s.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	kcfg := kubernetes.Config{
		Client: client, Namespace: ns, AgentID: id,
		RetainHomes: cfg.RetainHomes, StorageClass: cfg.StorageClass, Log: log,
	}
	if addr := cfg.DevEndpoint; addr != "" {
		// kwok's pods have no network: every session resolves to one local listener, so
		// the Running probe and session traffic have something real to dial.
		log.Warn("development mode: every session's stream is dialled at -dev-endpoint, not at its pod", "dev_endpoint", addr)
		kcfg.Resolver = func(context.Context, kubernetes.Target) (string, error) { return addr, nil }
	}
	b, err := kubernetes.New(kcfg)
	if err != nil {
		return nil, err
	}
	if err := b.Start(ctx); err != nil {
		return nil, err
	}
	log.Info("kubernetes backend started", "namespace", ns)
	return b, nil
}
