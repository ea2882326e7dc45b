package kubernetes_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"streamspace.dev/agent/backend/kubernetes"
	"streamspace.dev/e2e/kube"
	"streamspace.dev/libs/wire"
)

// benchSpec is a small session: 500 of them must fit the fake node. Without home, it
// has no PVC, whose binding (kwok, then the PV controller, then a scheduler retry of a
// pod that found its claim unbound) dominates bursts on this control plane.
func benchSpec(b testing.TB, home bool) json.RawMessage {
	var m map[string]any
	_ = json.Unmarshal(specJSON(b, "usr_bench", "firefox", "lscr.io/linuxserver/firefox:latest"), &m)
	m["cpu_millis"], m["memory_bytes"] = 10, 16<<20
	if !home {
		delete(m, "home")
	}
	out, _ := json.Marshal(m)
	return out
}

// runningTimes applies each of ids, each in its own Apply call, and returns, per
// session, the time from the start of its Apply to Running seen on the backend's Watch
// channel. With par 0 each session is applied once the one before runs (latency
// without queueing); otherwise par sessions are in flight at once, counting from Apply
// to Running (par = len(ids) sends them all at once).
func runningTimes(b *testing.B, be *kubernetes.Backend, ids []wire.SessionID, par int, home bool) []time.Duration {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := be.Watch(ctx)
	if err != nil {
		b.Fatal(err)
	}
	var mu sync.Mutex
	start := map[wire.SessionID]time.Time{}
	lat := map[wire.SessionID]time.Duration{}
	done := make(chan struct{})
	running := make(chan struct{}, len(ids))
	go func() {
		for st := range ch {
			if st.Phase != wire.PhaseRunning {
				continue
			}
			mu.Lock()
			if t0, ok := start[st.SessionID]; ok {
				if _, seen := lat[st.SessionID]; !seen {
					lat[st.SessionID] = time.Since(t0)
					running <- struct{}{}
					if len(lat) == len(ids) {
						close(done)
					}
				}
			}
			mu.Unlock()
		}
	}()
	spec := benchSpec(b, home)
	sem := make(chan struct{}, max(par, 1))
	for _, id := range ids {
		sem <- struct{}{}
		go func() {
			defer func() {
				if par == 0 {
					<-running
				}
				<-sem
			}()
			mu.Lock()
			start[id] = time.Now()
			mu.Unlock()
			if errs := be.Apply(ctx, []wire.Assignment{{SessionID: id, TenantID: testTenant, Generation: 1,
				Desired: wire.DesiredRunning, Spec: spec}}); errs != nil {
				b.Error(errs[0])
			}
		}()
	}
	select {
	case <-done:
	case <-time.After(150 * time.Second):
		mu.Lock()
		for _, id := range ids {
			if _, ok := lat[id]; !ok {
				st, _ := be.Status(id)
				b.Logf("not running: %+v", st)
			}
		}
		dumpNode(b, "")
		b.Fatalf("only %d of %d sessions Running after 150s", len(lat), len(ids))
	}
	out := make([]time.Duration, 0, len(lat))
	for _, d := range lat {
		out = append(out, d)
	}
	slices.Sort(out)
	return out
}

func pct(d []time.Duration, p float64) float64 {
	i := int(float64(len(d)-1) * p)
	return float64(d[i].Microseconds()) / 1000
}

func ids(n int) []wire.SessionID {
	out := make([]wire.SessionID, n)
	for i := range out {
		out[i] = newSessionID()
	}
	return out
}

// BenchmarkCreateToRunning measures, at the backend level, the time from Apply to
// Running (pod Ready through kube-scheduler, kube-controller-manager and kwok, and the
// endpoint probe answered) over 100 sessions: one after the other, ten in flight, and
// all at once. Run with -benchtime=1x.
func BenchmarkCreateToRunning(b *testing.B) {
	needCluster(b)
	for _, home := range []bool{true, false} {
		for _, par := range []int{0, 10, 100} {
			name := fmt.Sprintf("home=%v/inflight=%d", home, par)
			if par == 0 {
				name = fmt.Sprintf("home=%v/one-by-one", home)
			}
			b.Run(name, func(b *testing.B) {
				for range b.N {
					c := adminClient(b)
					ns := newNamespace(b, c)
					be := newBackend(b, ns, newStreamListener(b), options{})
					lat := runningTimes(b, be, ids(100), par, home)
					b.ReportMetric(pct(lat, 0.50), "p50-ms")
					b.ReportMetric(pct(lat, 0.99), "p99-ms")
					b.ReportMetric(pct(lat, 1), "max-ms")
					deleteNamespace(b, ns)
				}
			})
		}
	}
}

// BenchmarkHold500 has one backend create 500 sessions and hold them, and reports the
// process's RSS, Go heap and CPU time: to create them, and per minute of holding them
// (informer resyncs, periodic repair passes every 10s). Run with -benchtime=1x.
func BenchmarkHold500(b *testing.B) {
	needCluster(b)
	for range b.N {
		c := adminClient(b)
		ns := newNamespace(b, c)
		be := newBackend(b, ns, newStreamListener(b), options{mutate: func(cfg *kubernetes.Config) {
			cfg.Resync = 10 * time.Second
			cfg.Log = nil // 500 sessions' logs would measure the test logger
		}})
		cpu0 := cpuTime()
		t0 := time.Now()
		lat := runningTimes(b, be, ids(500), 100, true)
		createCPU := cpuTime() - cpu0
		b.Logf("500 sessions Running in %v (p50 %.0fms, p99 %.0fms), %.2f CPU-s", time.Since(t0).Round(time.Millisecond),
			pct(lat, .5), pct(lat, .99), createCPU.Seconds())

		const hold = 30 * time.Second
		cpu1 := cpuTime()
		time.Sleep(hold)
		holdCPU := cpuTime() - cpu1
		if obs, err := be.Observe(context.Background()); err != nil || len(obs) != 500 {
			b.Fatalf("observe: %d sessions, %v", len(obs), err)
		} else {
			running := 0
			other := map[string]int{}
			for _, st := range obs {
				if st.Phase == wire.PhaseRunning {
					running++
				} else {
					other[string(st.Phase)+"/"+st.Reason+": "+st.Message]++
				}
			}
			if running != 500 {
				b.Errorf("%d of 500 Running after holding; others: %v", running, other)
				dumpNode(b, ns)
			}
		}
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		rss, hwm := procStatus("VmRSS"), procStatus("VmHWM")
		b.Logf("RSS %.1f MiB (peak %.1f MiB), heap in use %.1f MiB, create %.2f CPU-s, hold %.3f CPU-s per minute",
			rss, hwm, float64(ms.HeapInuse)/(1<<20), createCPU.Seconds(), holdCPU.Seconds()*float64(time.Minute)/float64(hold))
		b.ReportMetric(rss, "rss-MiB")
		b.ReportMetric(hwm, "peak-rss-MiB")
		b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MiB")
		b.ReportMetric(createCPU.Seconds(), "create-cpu-s")
		b.ReportMetric(holdCPU.Seconds()*float64(time.Minute)/float64(hold), "hold-cpu-s/min")
		deleteNamespace(b, ns)
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procStatus reads a kB field of /proc/self/status, in MiB.
func procStatus(field string) float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	return -1
}

// deleteNamespace frees the fake node for the next run.
func deleteNamespace(b testing.TB, ns string) {
	_ = adminClient(b).CoreV1().Namespaces().Delete(context.Background(), ns, deleteOpts)
}

var deleteOpts = metav1.DeleteOptions{}

// dumpNode logs what the fake node and the node lifecycle controller said: a node
// whose kwok heartbeat comes late is marked NotReady and its pods unready.
func dumpNode(b testing.TB, ns string) {
	node, _ := adminClient(b).CoreV1().Nodes().Get(context.Background(), kube.NodeName, metav1.GetOptions{})
	for _, cond := range node.Status.Conditions {
		b.Logf("node condition %s=%s %s %s (heartbeat %v)", cond.Type, cond.Status, cond.Reason, cond.Message, cond.LastHeartbeatTime)
	}
	pods, _ := adminClient(b).CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	for _, p := range pods.Items {
		if p.Status.Phase == "Running" && !slices.ContainsFunc(p.Status.Conditions, func(c corev1.PodCondition) bool { return c.Type == "Ready" && c.Status == "True" }) {
			for _, m := range p.ManagedFields {
				b.Logf("unready pod %s: manager %s op %s sub %s at %v", p.Name, m.Manager, m.Operation, m.Subresource, m.Time)
			}
			b.Logf("status %+v", p.Status)
			break
		}
	}
}
