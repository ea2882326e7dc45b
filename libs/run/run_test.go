package run

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/poll"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fixture is one server on 127.0.0.1:0 with /readyz, /healthz and whatever the test adds.
type fixture struct {
	ready  *Readiness
	mux    *http.ServeMux
	server Server
	url    string
	client *http.Client
}

func newFixture(t *testing.T, name string) *fixture {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{ready: new(Readiness), mux: http.NewServeMux()}
	f.mux.Handle("GET /readyz", f.ready.Handler())
	f.mux.Handle("GET /healthz", Liveness())
	f.server = Server{Name: name, HTTP: &http.Server{Handler: f.mux}, Listener: ln}
	f.url = "http://" + ln.Addr().String()
	// No keep-alive: every request dials, so a closed listener shows at once, and no idle
	// connection goroutine outlives the test.
	f.client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	return f
}

func (f *fixture) get(path string) (int, string, error) {
	resp, err := f.client.Get(f.url + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// serve runs Serve in the background and returns its result channel.
func serve(ctx context.Context, cfg Config, ready *Readiness, servers []Server, closers ...func(context.Context) error) <-chan error {
	if cfg.Logger == nil {
		cfg.Logger = quiet()
	}
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, cfg, ready, servers, closers...) }()
	return done
}

func TestSlowInFlightRequestCompletesDuringShutdown(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "api")
	entered, release := make(chan struct{}), make(chan struct{})
	f.mux.HandleFunc("GET /slow", func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		_, _ = io.WriteString(w, "finished")
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := serve(ctx, Config{ShutdownTimeout: time.Minute}, f.ready, []Server{f.server})
	poll.Until(t, 10*time.Second, "ready", f.ready.Ready)

	type reply struct {
		code int
		body string
		err  error
	}
	got := make(chan reply, 1)
	go func() {
		code, body, err := f.get("/slow")
		got <- reply{code, body, err}
	}()
	<-entered
	cancel()
	// Shutdown has begun once the listener refuses new connections; the slow request is
	// still in flight.
	poll.Until(t, 10*time.Second, "listener closed", func() bool {
		c, err := net.Dial("tcp", f.server.Listener.Addr().String())
		if err == nil {
			_ = c.Close()
		}
		return err != nil
	})
	select {
	case err := <-done:
		t.Fatalf("Serve returned %v before the in-flight request finished", err)
	default:
	}
	close(release)

	r := <-got
	if r.err != nil || r.code != http.StatusOK || r.body != "finished" {
		t.Fatalf("in-flight request: %d %q %v", r.code, r.body, r.err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

func TestReadinessFailsBeforeListenerCloses(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "api")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The drain delay is only an upper bound on how long the test may take to see the 503
	// through the still-open listener; nothing asserts its length.
	done := serve(ctx, Config{DrainDelay: 2 * time.Second}, f.ready, []Server{f.server})
	poll.Until(t, 10*time.Second, "ready", f.ready.Ready)

	if code, body, err := f.get("/readyz"); err != nil || code != http.StatusOK || body != "ok" {
		t.Fatalf("readyz before shutdown: %d %q %v", code, body, err)
	}
	if code, _, err := f.get("/healthz"); err != nil || code != http.StatusOK {
		t.Fatalf("healthz: %d %v", code, err)
	}
	cancel()

	var resp *http.Response
	poll.Until(t, 10*time.Second, "readyz 503", func() bool {
		r, err := f.client.Get(f.url + "/readyz")
		if err != nil {
			t.Fatalf("listener closed before readiness failed: %v", err)
		}
		if r.StatusCode == http.StatusOK {
			_ = r.Body.Close()
			return false
		}
		resp = r
		return true
	})
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("readyz status %d", resp.StatusCode)
	}
	if e := apperr.FromResponse(resp); e.Code != apperr.Unavailable {
		t.Fatalf("readyz problem code %q", e.Code)
	}
	// Liveness is unaffected by draining.
	if code, _, err := f.get("/healthz"); err != nil || code != http.StatusOK {
		t.Fatalf("healthz while draining: %d %v", code, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.get("/healthz"); err == nil {
		t.Fatal("listener still open after Serve returned")
	}
}

var errDBClose = errors.New("db close failed")

func TestClosersRunInReverseOrderAfterServersStop(t *testing.T) {
	t.Parallel()
	a, b := newFixture(t, "public"), newFixture(t, "internal")
	ready := new(Readiness)
	var (
		mu    sync.Mutex
		order []string
	)
	closer := func(name string) func(context.Context) error {
		return func(ctx context.Context) error {
			if _, _, err := a.get("/healthz"); err == nil {
				t.Errorf("closer %s ran while a server still accepted requests", name)
			}
			if _, ok := ctx.Deadline(); !ok {
				t.Errorf("closer %s got no deadline", name)
			}
			mu.Lock()
			defer mu.Unlock()
			order = append(order, name)
			if name == "db" {
				return errDBClose
			}
			return nil
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := serve(ctx, Config{}, ready, []Server{a.server, b.server},
		closer("tracer"), closer("db"), closer("cache"))
	poll.Until(t, 10*time.Second, "ready", ready.Ready)
	for _, f := range []*fixture{a, b} {
		if code, _, err := f.get("/healthz"); err != nil || code != http.StatusOK {
			t.Fatalf("%s: %d %v", f.server.Name, code, err)
		}
	}
	cancel()
	err := <-done
	if want := []string{"cache", "db", "tracer"}; !slices.Equal(order, want) {
		t.Fatalf("closer order %v, want %v", order, want)
	}
	if !errors.Is(err, errDBClose) {
		t.Fatalf("Serve error %v, want the db closer's", err)
	}
}

func TestServerThatFailsToStartShutsTheRestDown(t *testing.T) {
	t.Parallel()
	good, bad := newFixture(t, "good"), newFixture(t, "bad")
	_ = bad.server.Listener.Close() // Serve's Accept fails at once
	ready := new(Readiness)
	closed := make(chan struct{})
	done := serve(context.Background(), Config{}, ready, []Server{good.server, bad.server},
		func(context.Context) error { close(closed); return nil })

	err := <-done
	if !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Serve error %v, want the failed listener's", err)
	}
	select {
	case <-closed:
	default:
		t.Fatal("closer did not run")
	}
	if ready.Ready() {
		t.Fatal("ready after a failed start")
	}
	if _, _, err := good.get("/healthz"); err == nil {
		t.Fatal("the healthy server still serves")
	}
}

func TestDrainDeadlineForcesClose(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "api")
	entered, release := make(chan struct{}), make(chan struct{})
	defer close(release)
	f.mux.HandleFunc("GET /stuck", func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		select {
		case <-release:
		case <-r.Context().Done(): // Close cancels it by closing the connection
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := serve(ctx, Config{ShutdownTimeout: time.Millisecond}, f.ready, []Server{f.server})
	poll.Until(t, 10*time.Second, "ready", f.ready.Ready)
	reqErr := make(chan error, 1)
	go func() {
		_, _, err := f.get("/stuck")
		reqErr <- err
	}()
	<-entered
	cancel()
	err := <-done
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Serve error %v, want the drain deadline", err)
	}
	if err := <-reqErr; err == nil {
		t.Fatal("stuck request got a response despite the forced close")
	}
}

func TestReadinessChecks(t *testing.T) {
	t.Parallel()
	var r Readiness
	r.CheckTimeout = time.Millisecond
	if err := r.Check(context.Background()); !apperr.IsCode(err, apperr.Unavailable) {
		t.Fatalf("zero value: %v", err)
	}
	r.Set(true)
	if err := r.Check(context.Background()); err != nil {
		t.Fatalf("ready without checks: %v", err)
	}
	r.AddCheck("cache", func(context.Context) error { return nil })
	r.AddCheck("db", func(ctx context.Context) error {
		// A hung dependency: only the per-check timeout ends it.
		<-ctx.Done()
		return ctx.Err()
	})
	err := r.Check(context.Background())
	e, ok := apperr.As(err)
	if !ok || e.Code != apperr.Unavailable || e.Message != `check "db" failed` || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("failing check: %v", err)
	}
}

// Signals are process-wide, so this test does not run in parallel: parallel tests start
// only after it has finished.
func TestSIGTERMStopsServe(t *testing.T) {
	f := newFixture(t, "api")
	done := serve(context.Background(), Config{}, f.ready, []Server{f.server})
	// Serve subscribes to signals before it marks itself ready.
	poll.Until(t, 10*time.Second, "ready", f.ready.Ready)
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}
