package kubernetes_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"streamspace.dev/agent/backend/kubernetes"
	"streamspace.dev/e2e/kube"
	"streamspace.dev/libs/poll"
	"streamspace.dev/libs/tenant"
	"streamspace.dev/libs/wire"
)

// cluster is the one control plane every test of this package shares; each test works
// in its own namespace. nil under -short.
var (
	cluster *kube.Cluster
	admin   *rest.Config
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if !isShort() {
		dir, err := os.MkdirTemp("", "agent-kube-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		// One big fake node: the benchmark holds 500 sessions, and the default node
		// takes 110 pods.
		opts := kube.Options{Dir: filepath.Join(dir, "kube"),
			NodeAllocatable: map[string]string{"cpu": "500", "memory": "2Ti", "pods": "2000"}}
		cluster, err = kube.Start(ctx, opts)
		cancel()
		if err != nil {
			fmt.Fprintln(os.Stderr, "starting the local Kubernetes control plane:", err)
			return 1
		}
		defer cluster.Stop()
		if admin, err = clientcmd.BuildConfigFromFlags("", cluster.Kubeconfig()); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		// Hundreds of sessions mean thousands of requests: client-go's default 5 QPS
		// would measure the rate limiter, not the backend.
		admin.QPS, admin.Burst = 500, 1000
	}
	return m.Run()
}

// isShort reads -test.short before flag parsing has happened in m.Run.
func isShort() bool {
	for _, a := range os.Args[1:] {
		if a == "-test.short" || a == "-test.short=true" {
			return true
		}
	}
	return false
}

func needCluster(t testing.TB) {
	t.Helper()
	if cluster == nil {
		t.Skip("needs the local Kubernetes control plane (not under -short)")
	}
}

func adminClient(t testing.TB) k8s.Interface {
	t.Helper()
	c, err := k8s.NewForConfig(admin)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var nsSeq atomic.Int64

// newNamespace creates a namespace for one test and waits for its default
// ServiceAccount, without which the ReplicaSet controller's pods are refused.
func newNamespace(t testing.TB, c k8s.Interface) string {
	t.Helper()
	ctx := context.Background()
	name := fmt.Sprintf("t%d-%s", nsSeq.Add(1), strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			return r
		case r >= 'A' && r <= 'Z':
			return r + 'a' - 'A'
		}
		return '-'
	}, t.Name()))
	if len(name) > 50 {
		name = name[:50]
	}
	name = strings.TrimRight(name, "-")
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll.UntilNil(t, 30*time.Second, "default ServiceAccount", func() error {
		_, err := c.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err
	})
	return name
}

// streamListener is a real TCP server standing in for every session's stream port:
// the cluster has no kube-proxy and kwok runs no containers.
type streamListener struct {
	ln       net.Listener
	accepted atomic.Int64
}

func newStreamListener(t testing.TB) *streamListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &streamListener{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			go func() {
				_, _ = c.Write([]byte("RFB 003.008\n"))
				_, _ = io.Copy(io.Discard, c)
				_ = c.Close()
			}()
		}
	}()
	t.Cleanup(func() { _ = ln.Close() })
	return s
}

// resolver sends every session to the listener, whatever its pod IP.
func (s *streamListener) resolver(context.Context, kubernetes.Target) (string, error) {
	return s.ln.Addr().String(), nil
}

type options struct {
	cfg    *rest.Config
	mutate func(*kubernetes.Config)
}

// newBackend starts a backend in ns whose endpoints resolve to ln.
func newBackend(t testing.TB, ns string, ln *streamListener, o options) *kubernetes.Backend {
	t.Helper()
	rc := o.cfg
	if rc == nil {
		rc = admin
	}
	client, err := k8s.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	cfg := kubernetes.Config{
		Client: client, Namespace: ns, AgentID: "agent-" + wire.AgentID(ns),
		Resync: 2 * time.Second, Resolver: ln.resolver,
		Log: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
	if o.mutate != nil {
		o.mutate(&cfg)
	}
	b, err := kubernetes.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); b.Close() })
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := b.WaitSynced(wctx); err != nil {
		t.Fatalf("informers did not sync: %v", err)
	}
	return b
}

// testWriter sends logs to t.Log while the test runs, and nowhere after.
type testWriter struct{ t testing.TB }

var logMu sync.Mutex

func (w testWriter) Write(p []byte) (int, error) {
	logMu.Lock()
	defer logMu.Unlock()
	defer func() { _ = recover() }() // a log line after the test ended
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// specJSON is a session spec as the control plane renders it (spec.Session, libs/spec).
func specJSON(t testing.TB, owner, template, image string) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(map[string]any{
		"owner_id": owner, "template": template, "image": image,
		"env":          []map[string]string{{"name": "RESOLUTION", "value": "1280x720"}},
		"resources":    map[string]any{"requests": map[string]string{"cpu": "250m", "memory": "256Mi"}, "limits": map[string]string{"memory": "512Mi"}},
		"cpu_millis":   250,
		"memory_bytes": 256 << 20,
		"home":         map[string]string{"mount_path": "/home/user", "size": "1Gi"},
		"volumes":      []map[string]string{{"name": "scratch", "mount_path": "/tmp/scratch"}},
		"ports":        []map[string]any{{"name": "vnc", "port": 5901, "protocol": "TCP", "stream": "rfb"}, {"name": "audio", "port": 4713, "protocol": "TCP"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var idSeq atomic.Int64

// newSessionID returns an id shaped like sessions.NewID.
func newSessionID() wire.SessionID {
	const alphabet = "abcdefghijklmnopqrstuvwxyz234567"
	n := idSeq.Add(1) + time.Now().UnixNano()
	var b [20]byte
	for i := range b {
		b[i] = alphabet[n&31]
		n = n>>5 ^ n*0x9e3779b1
		if n < 0 {
			n = -n
		}
	}
	return wire.SessionID("ses_" + string(b[:]))
}

const testTenant = tenant.ID("tenantaaaaaa")

func assignment(t testing.TB, id wire.SessionID, gen int64, d wire.Desired) wire.Assignment {
	return wire.Assignment{SessionID: id, TenantID: testTenant, Generation: gen, Desired: d,
		Spec: specJSON(t, "usr_alice", "firefox", "lscr.io/linuxserver/firefox:latest")}
}

func applyOK(t testing.TB, b *kubernetes.Backend, set ...wire.Assignment) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if errs := b.Apply(ctx, set); errs != nil {
		t.Fatalf("apply: %v", errs)
	}
}

// waitPhase waits until session id reports phase (and reason, if not empty).
func waitPhase(t testing.TB, b *kubernetes.Backend, id wire.SessionID, phase wire.Phase, reason string) wire.SessionStatus {
	t.Helper()
	var st wire.SessionStatus
	poll.UntilNil(t, 60*time.Second, fmt.Sprintf("%s %s %s", id, phase, reason), func() error {
		var ok bool
		st, ok = b.Status(id)
		if !ok && phase == wire.PhaseDeleted {
			return nil
		}
		if !ok || st.Phase != phase || (reason != "" && st.Reason != reason) {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	return st
}

func isNotFound(err error) bool { return apierrors.IsNotFound(err) }
