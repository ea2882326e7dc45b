package outbound

import (
	"bufio"
	"bytes"
	"encoding/json"
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
)

// build compiles a command of the workspace into a temporary folder.
func build(t *testing.T, pkg string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", pkg, err, b)
	}
	return out
}

// proc is a binary running inside a namespace, with its log lines kept for assertions
// and for the failure message.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error

	mu    sync.Mutex
	lines []string
}

// start runs bin with args inside namespace ns. `ip netns exec` execs the binary in
// place, so the pid and signals are the binary's own. The process is stopped when the
// test ends if it still runs.
func start(t *testing.T, name, ns, bin string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, done: make(chan struct{})}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns, bin}, args...)...)
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
		p.stop(t)
		if t.Failed() {
			t.Logf("--- %s output (last 40 lines) ---\n%s", p.name, p.tail(40))
		}
	})
	return p
}

// stop sends SIGTERM, waits for a graceful exit and kills after 15 s. It returns the
// exit error (nil for a clean exit).
func (p *proc) stop(t *testing.T) error {
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
		t.Errorf("%s did not stop within 15 s of SIGTERM; killing it", p.name)
		_ = p.cmd.Process.Kill()
		<-p.done
		return p.err
	}
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// count returns how many log lines contain every one of subs.
func (p *proc) count(subs ...string) int {
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

func (p *proc) tail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines[max(0, len(p.lines)-n):], "\n")
}

// api is an HTTP client of the control plane's API. The API listens on the loopback of
// the control plane's namespace; the client's sockets are made inside that namespace.
type api struct {
	t    *testing.T
	base string
	c    *http.Client
}

func newAPI(t *testing.T, ns, base string) *api {
	// No keep-alive: the control plane restarts during the test, and a pooled connection
	// to the old process would only add a confusing retry.
	return &api{t: t, base: base, c: &http.Client{Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: dialer(ns), DisableKeepAlives: true}}}
}

// do sends one request and returns the status and body; it fails the test only on a
// transport error.
func (a *api) do(method, path, token string, body any) (int, []byte, error) {
	var r io.Reader
	if body != nil {
		j, err := json.Marshal(body)
		if err != nil {
			a.t.Fatal(err)
		}
		r = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, a.base+path, r)
	if err != nil {
		a.t.Fatal(err)
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

// call is do that fails the test unless the status is want; out, if not nil, receives
// the JSON reply.
func (a *api) call(method, path, token string, body, out any, want int) {
	a.t.Helper()
	status, b, err := a.do(method, path, token, body)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	if status != want {
		a.t.Fatalf("%s %s: %d, want %d: %s", method, path, status, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			a.t.Fatalf("%s %s: decoding %s: %v", method, path, b, err)
		}
	}
}

// waitReady polls /readyz until it answers 200, failing early if cp exits.
func (a *api) waitReady(cp *proc, timeout time.Duration) {
	a.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if status, _, err := a.do("GET", "/readyz", "", nil); err == nil && status == http.StatusOK {
			return
		}
		if cp.exited() {
			a.t.Fatalf("the control plane exited before it was ready (%v)", cp.err)
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("the control plane was not ready within %s", timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// eventually polls f every 50 ms until it returns nil, or fails with what and f's last
// error.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	began := time.Now()
	for {
		err := f()
		if err == nil {
			t.Logf("%s after %v", what, time.Since(began).Round(time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// baseEnv is the environment for the binaries: ours, without settings that would point
// them elsewhere (a developer's DATABASE_URL or STREAMSPACE_* overrides).
func baseEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "DATABASE_URL=") || strings.HasPrefix(kv, "STREAMSPACE_") {
			continue
		}
		out = append(out, kv)
	}
	return out
}
