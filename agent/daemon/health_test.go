package daemon

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeSyncer is a backend whose informers sync when told.
type fakeSyncer struct{ synced atomic.Bool }

func (f *fakeSyncer) WaitSynced(ctx context.Context) error {
	if f.synced.Load() {
		return nil
	}
	<-ctx.Done()
	return ctx.Err()
}

func status(t *testing.T, h http.Handler, path string) int {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return rec.Code
}

// TestHealthStates walks /readyz through an agent's life: starting, backend up but not
// synced, synced but no tunnel, ready, tunnel lost. /healthz stays 200 throughout.
func TestHealthStates(t *testing.T) {
	t.Parallel()
	h := newHealth()
	srv := h.handler()
	b := &fakeSyncer{}
	steps := []struct {
		name  string
		do    func()
		ready int
	}{
		{"enrolling", func() {}, 503},
		{"backend started, informers not synced", func() { h.backendStarted(b) }, 503},
		{"tunnel up, informers not synced", func() { h.tunnelUp(true) }, 503},
		{"tunnel up and synced", func() { b.synced.Store(true) }, 200},
		{"tunnel lost", func() { h.tunnelUp(false) }, 503},
		{"tunnel back", func() { h.tunnelUp(true) }, 200},
	}
	for _, s := range steps {
		s.do()
		if got := status(t, srv, "/readyz"); got != s.ready {
			t.Errorf("%s: /readyz %d, want %d", s.name, got, s.ready)
		}
		if got := status(t, srv, "/healthz"); got != 200 {
			t.Errorf("%s: /healthz %d, want 200", s.name, got)
		}
	}
}

// TestHealthBackendWithoutSync is the memory backend's case: nothing to sync, so the
// tunnel alone decides.
func TestHealthBackendWithoutSync(t *testing.T) {
	t.Parallel()
	h := newHealth()
	h.backendStarted(struct{}{})
	h.tunnelUp(true)
	if got := status(t, h.handler(), "/readyz"); got != 200 {
		t.Fatalf("/readyz %d, want 200", got)
	}
}

// TestHealthEndpointWhileEnrolling runs the real daemon against an enrollment endpoint
// that keeps answering "unavailable": the process is alive (/healthz 200) and not ready
// (/readyz 503) on a real socket, and the endpoint closes when the agent stops.
func TestHealthEndpointWhileEnrolling(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	enroll := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		calls.Add(1)
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, `{"code":"unavailable","title":"busy","retryable":true}`)
	}))
	defer enroll.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg, err := parse(t, []string{"-gateway", "127.0.0.1:1", "-state-dir", t.TempDir(), "-token", "sst_enroll_x",
		"-enroll-url", enroll.URL + "/api/v1/agents/enroll", "-health-listen", addr, "-backoff-max", "200ms"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, slog.New(slog.DiscardHandler)) }()

	get := func(path string) (int, error) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 503 && !strings.Contains(string(b), "unavailable") {
			t.Errorf("%s: 503 without a problem body: %s", path, b)
		}
		return resp.StatusCode, nil
	}
	deadline := time.Now().Add(20 * time.Second)
	for calls.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the agent never retried enrollment")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, err := get("/healthz"); err != nil || code != 200 {
		t.Fatalf("/healthz while enrolling: %d %v", code, err)
	}
	if code, err := get("/readyz"); err != nil || code != 503 {
		t.Fatalf("/readyz while enrolling: %d %v, want 503", code, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := get("/healthz"); err == nil {
		t.Fatal("the health endpoint still answers after the agent stopped")
	}
}

func TestHealthListenTaken(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg, err := parse(t, []string{"-gateway", "127.0.0.1:1", "-state-dir", t.TempDir(), "-health-listen", ln.Addr().String()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := Run(context.Background(), cfg, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "-health-listen") {
		t.Fatalf("Run = %v, want a -health-listen error", err)
	}
}
