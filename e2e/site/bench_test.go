package site

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"streamspace.dev/e2e/harness"
	"streamspace.dev/e2e/kube"
	"streamspace.dev/libs/benchenv"
)

// BenchmarkCreateToRunning measures, through the whole stack, the time from a client's
// POST /api/v1/sessions to the session's Running event on the API's live stream: the
// sessions service, the scheduler, the gateway and the QUIC tunnel through the site's
// firewall, the agent's Kubernetes backend, kube-apiserver, kube-controller-manager,
// kube-scheduler and kwok, and the agent's probe of the stream endpoint. 100 sessions
// (STREAMSPACE_BENCH_SESSIONS overrides) one after the other and ten in flight, from a
// template with a persistent home (a PVC per session) and from one without. Run with
// -benchtime=1x; it needs what TestCustomerSite needs.
//
// STREAMSPACE_BENCH_KUBE_FLAGS adds flags to the Kubernetes processes, for experiments:
// "kube-controller-manager=--pvclaimbinder-sync-period=1s kube-scheduler=--v=2".
func BenchmarkCreateToRunning(b *testing.B) {
	opts := kube.Options{ExtraArgs: map[string][]string{}}
	for _, f := range strings.Fields(os.Getenv("STREAMSPACE_BENCH_KUBE_FLAGS")) {
		name, flag, ok := strings.Cut(f, "=")
		if !ok {
			b.Fatalf("STREAMSPACE_BENCH_KUBE_FLAGS: %q is not process=--flag", f)
		}
		opts.ExtraArgs[name] = append(opts.ExtraArgs[name], flag)
	}
	s := up(b, opts)
	s.signup(b)
	s.enroll(b, b)
	live := s.watch(b)
	s.createTemplate(b, "site-light", false)
	n := benchenv.Int(b, "STREAMSPACE_BENCH_SESSIONS", 100)
	for _, tpl := range []struct {
		name string
		home bool
	}{{templateName, true}, {"site-light", false}} {
		for _, par := range []int{1, 10} {
			b.Run(fmt.Sprintf("home=%v/inflight=%d", tpl.home, par), func(b *testing.B) {
				for range b.N {
					load, _ := os.ReadFile("/proc/loadavg")
					lat, ids := s.createToRunning(b, live, tpl.name, n, par)
					b.ReportMetric(pct(lat, 0.50), "p50-ms")
					b.ReportMetric(pct(lat, 0.99), "p99-ms")
					b.ReportMetric(pct(lat, 1), "max-ms")
					// Logged too, so a failing clean-up below does not hide the figures.
					b.Logf("%d sessions: p50 %.1f ms, p99 %.1f ms, max %.1f ms; load average before %s",
						len(lat), pct(lat, 0.5), pct(lat, 0.99), pct(lat, 1), strings.TrimSpace(string(load)))
					b.StopTimer()
					s.deleteAll(b, ids)
					b.StartTimer()
				}
			})
		}
	}
}

// createToRunning creates n sessions from template, par at a time, and returns each
// one's time from the start of its POST to its first Running event, sorted, and the
// session ids.
func (s *stack) createToRunning(b *testing.B, live *liveStream, template string, n, par int) ([]time.Duration, []string) {
	var mu sync.Mutex
	var lat []time.Duration
	var ids []string
	var failures []string
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			t0 := time.Now()
			code, body, err := s.api.Do("POST", "/api/v1/sessions", s.admin, map[string]string{"template": template})
			var v sessionView
			if err == nil && code == 201 {
				err = json.Unmarshal(body, &v)
			} else if err == nil {
				err = fmt.Errorf("%d %s", code, body)
			}
			if err != nil {
				mu.Lock()
				failures = append(failures, "create: "+err.Error())
				mu.Unlock()
				return
			}
			done, at := live.runningCh(v.ID)
			mu.Lock()
			ids = append(ids, v.ID)
			mu.Unlock()
			select {
			case <-done:
				mu.Lock()
				lat = append(lat, at().Sub(t0))
				mu.Unlock()
			case <-time.After(2 * time.Minute):
				mu.Lock()
				failures = append(failures, "session "+v.ID+" not Running within 2m")
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(failures) > 0 {
		b.Fatalf("%d of %d sessions failed; first: %s", len(failures), n, failures[0])
	}
	slices.Sort(lat)
	return lat, ids
}

// deleteAll deletes sessions through the API and waits until the agent has removed
// their objects, so one run's clean-up does not load the next.
func (s *stack) deleteAll(b *testing.B, ids []string) {
	for _, id := range ids {
		s.api.Call("DELETE", "/api/v1/sessions/"+id, s.admin, nil, nil, 204)
	}
	harness.Eventually(b, 3*time.Minute, fmt.Sprintf("the objects of %d deleted sessions are gone", len(ids)), func() error {
		var l struct {
			Items []object `json:"items"`
		}
		if err := s.kube.Do(b.Context(), "GET", kinds["ConfigMap"]+"?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dstreamspace-agent", nil, &l); err != nil {
			return err
		}
		if len(l.Items) > 0 {
			return fmt.Errorf("%d sessions left", len(l.Items))
		}
		return nil
	})
}

func pct(d []time.Duration, p float64) float64 {
	if len(d) == 0 {
		return 0
	}
	i := int(float64(len(d)-1) * p)
	return float64(d[i].Microseconds()) / 1000
}
