// Package harness runs the real binaries of an end-to-end test and talks to them: it
// builds commands of the workspace, runs them (inside a network namespace if asked) with
// their output kept for assertions and failure messages, and drives the public API as
// any client would.
package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"streamspace.dev/e2e/netns"
	"streamspace.dev/libs/pgserver"
	"streamspace.dev/libs/poll"
)

// Build compiles a command of the workspace into a temporary folder and returns the
// binary's path.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", pkg, err, b)
	}
	return out
}

// Proc is a binary running inside a namespace, with its log lines kept for assertions
// and for the failure message.
type Proc struct {
	Name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error

	mu    sync.Mutex
	lines []string
}

// Start runs bin with args inside namespace ns (empty: where the test runs). `ip netns
// exec` execs the binary in place, so the pid and signals are the binary's own. The
// process is stopped when the test ends if it still runs; if the test failed, the tail
// of its output is logged.
func Start(t testing.TB, name, ns, bin string, env []string, args ...string) *Proc {
	t.Helper()
	p := &Proc{Name: name, done: make(chan struct{})}
	if ns == "" {
		p.cmd = exec.Command(bin, args...)
	} else {
		p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns, bin}, args...)...)
	}
	p.cmd.Env = env
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout = p.cmd.Stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		s := bufio.NewScanner(stderr)
		s.Buffer(make([]byte, 64<<10), 1<<20)
		for s.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, s.Text())
			p.mu.Unlock()
		}
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.Stop(t)
		if t.Failed() {
			t.Logf("--- %s output (last 40 lines) ---\n%s", p.Name, p.Tail(40))
		}
	})
	return p
}

// Stop sends SIGTERM, waits for a graceful exit and kills after 15 s. It returns the
// exit error (nil for a clean exit).
func (p *Proc) Stop(t testing.TB) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(15 * time.Second):
		t.Errorf("%s did not stop within 15 s of SIGTERM; killing it", p.Name)
		_ = p.cmd.Process.Kill()
		<-p.done
		return p.err
	}
}

// Kill sends SIGKILL, as a crash or the OOM killer would, and waits for the exit.
func (p *Proc) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Err is the exit error; valid once Exited.
func (p *Proc) Err() error {
	select {
	case <-p.done:
		return p.err
	default:
		return nil
	}
}

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Count returns how many output lines contain every one of subs.
func (p *Proc) Count(subs ...string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
next:
	for _, l := range p.lines {
		for _, s := range subs {
			if !strings.Contains(l, s) {
				continue next
			}
		}
		n++
	}
	return n
}

// Tail returns the last n output lines.
func (p *Proc) Tail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines[max(0, len(p.lines)-n):], "\n")
}

// API is an HTTP client of the control plane's API. The API may listen on the loopback of
// a namespace; the client's sockets are then made inside it. T is the test that a failed
// call fails; a step of a test may swap it for its own.
type API struct {
	T    testing.TB
	Base string
	c    *http.Client
}

// NewAPI returns a client of the API at base (http://host:port) reached from namespace ns.
// keepAlive pools connections; leave it off when the control plane restarts during the
// test, where a pooled connection to the old process would only add a confusing retry.
func NewAPI(t testing.TB, ns, base string, keepAlive bool) *API {
	tr := &http.Transport{DialContext: netns.Dialer(ns), DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 64}
	return &API{T: t, Base: base, c: &http.Client{Timeout: 10 * time.Second, Transport: tr}}
}

// Stream sends a GET whose answer is read as it arrives (server-sent events): no
// client timeout, ctx ends it.
func (a *API) Stream(ctx context.Context, path, token string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.Base+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	c := *a.c
	c.Timeout = 0
	return c.Do(req)
}

// Do sends one request with a JSON body (if not nil) and returns the status and body.
func (a *API) Do(method, path, token string, body any) (int, []byte, error) {
	var r io.Reader
	if body != nil {
		j, err := json.Marshal(body)
		if err != nil {
			a.T.Fatal(err)
		}
		r = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, a.Base+path, r)
	if err != nil {
		a.T.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := a.c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// Call is Do that fails the test unless the status is want; out, if not nil, receives
// the JSON reply.
func (a *API) Call(method, path, token string, body, out any, want int) {
	a.T.Helper()
	status, b, err := a.Do(method, path, token, body)
	if err != nil {
		a.T.Fatalf("%s %s: %v", method, path, err)
	}
	if status != want {
		a.T.Fatalf("%s %s: %d, want %d: %s", method, path, status, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			a.T.Fatalf("%s %s: decoding %s: %v", method, path, b, err)
		}
	}
}

// WaitReady polls /readyz until it answers 200, failing early if cp exits.
func (a *API) WaitReady(cp *Proc, timeout time.Duration) {
	a.T.Helper()
	poll.UntilNil(a.T, timeout, "the control plane ready", func() error {
		a.T.Helper()
		status, _, err := a.Do("GET", "/readyz", "", nil)
		if err == nil && status == http.StatusOK {
			return nil
		}
		if cp.Exited() {
			a.T.Fatalf("the control plane exited before it was ready (%v)", cp.err)
		}
		if err != nil {
			return err
		}
		return fmt.Errorf("/readyz answered %d", status)
	})
}

// Eventually is poll.UntilNil that also logs how long the wait took, which a slow
// run's log then shows without a failure.
func Eventually(t testing.TB, timeout time.Duration, what string, f func() error) {
	t.Helper()
	began := time.Now()
	poll.UntilNil(t, timeout, what, f)
	t.Logf("%s after %v", what, time.Since(began).Round(time.Millisecond))
}

// DevDataDir returns a new data folder for `streamspace dev` and stops the private
// PostgreSQL that the binary starts in it when the test ends: the cluster outlives the
// binary by design (a restarted control plane reuses it), and must not outlive the test.
// Call it before starting the binary, so this cleanup runs after the binary's.
func DevDataDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "controlplane")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := pgserver.StopDir(ctx, filepath.Join(dir, "postgres")); err != nil {
			t.Errorf("stopping the control plane's PostgreSQL: %v", err)
		}
	})
	return dir
}

// BaseEnv is the environment for the binaries: ours, without settings that would point
// them elsewhere (a developer's DATABASE_URL or STREAMSPACE_* overrides).
func BaseEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "DATABASE_URL=") || strings.HasPrefix(kv, "STREAMSPACE_") {
			continue
		}
		out = append(out, kv)
	}
	return out
}
