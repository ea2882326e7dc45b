package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"streamspace.dev/e2e/harness"
	"streamspace.dev/libs/pgserver"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestDevStartsFromNothing is the README's run command on a fresh machine: no
// DATABASE_URL, an empty data folder. `streamspace dev` must start its own PostgreSQL,
// migrate, serve, start the local Kubernetes cluster and an enrolled demo agent, create
// the demo account and print its credentials; a session created through the API from a
// catalog template must reach Running on that agent, the printed copy-paste walk-through
// must too; SIGTERM must stop everything but PostgreSQL; the next start reuses the
// database, the credentials and the agent's enrollment.
func TestDevStartsFromNothing(t *testing.T) {
	for _, tool := range []string{"curl", "bash", "grep", "cut"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not on PATH: the walk-through `streamspace dev` prints needs it (apt-get install curl)", tool)
		}
	}
	// The cluster's binaries: a no-op once built; minutes on a cold machine.
	if out, err := exec.Command("bash", "kube/build.sh").CombinedOutput(); err != nil {
		t.Fatalf("the local cluster's binaries could not be built: %v\n%s\nRun `bash e2e/kube/build.sh` (needs the Go module proxy, about 5 minutes and 3 GB of RAM once).", err, out)
	}
	bin := harness.Build(t, "streamspace.dev/services/streamspace/cmd/streamspace")
	dataDir := filepath.Join(t.TempDir(), "state")
	t.Cleanup(func() {
		// The cluster outlives the binary by design; this test's must not outlive the test.
		if err := pgserver.StopDir(context.Background(), filepath.Join(dataDir, "postgres")); err != nil {
			t.Errorf("stopping the private cluster: %v", err)
		}
	})

	var first banner
	for round := 1; round <= 2; round++ {
		d := startDev(t, bin, dataDir)
		b := d.banner
		for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
			resp, err := http.Get(b.base + path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				d.fatalf("round %d: %s answered %d", round, path, resp.StatusCode)
			}
		}
		if !strings.Contains(b.agent, "online") || !strings.Contains(b.agent, "Kubernetes backend") {
			d.fatalf("round %d: the banner's agent line is %q, want it online on the Kubernetes backend", round, b.agent)
		}

		// The printed credentials sign in.
		api := &apiCaller{d: d, base: b.base}
		var tok struct {
			AccessToken string `json:"access_token"`
		}
		api.call("POST", "/api/v1/auth/login", "", map[string]string{"tenant": b.tenant, "email": b.email, "password": b.password}, &tok, 200)
		var agents struct {
			Items []struct {
				ID, Name, State string
				Facts           map[string]string
			}
		}
		api.call("GET", "/api/v1/agents", tok.AccessToken, nil, &agents, 200)
		// One agent in round 2 too: the restart reused the enrollment instead of enrolling again.
		if len(agents.Items) != 1 || agents.Items[0].Name != "demo-cluster" || agents.Items[0].State != "online" ||
			agents.Items[0].Facts["platform"] != "kubernetes" {
			d.fatalf("round %d: agents %+v, want demo-cluster alone, online, on kubernetes", round, agents.Items)
		}

		if round == 1 {
			first = b
			// A session from a catalog template, through the API, reaches Running.
			var s struct {
				ID, Phase string
				AgentID   string `json:"agent_id"`
			}
			api.call("POST", "/api/v1/sessions", tok.AccessToken, map[string]string{"template": "firefox"}, &s, 201)
			deadline := time.Now().Add(90 * time.Second)
			for s.Phase != "Running" {
				if time.Now().After(deadline) {
					d.fatalf("session %s is %s, never Running", s.ID, s.Phase)
				}
				time.Sleep(200 * time.Millisecond)
				api.call("GET", "/api/v1/sessions/"+s.ID, tok.AccessToken, nil, &s, 200)
			}
			if s.AgentID != agents.Items[0].ID {
				d.fatalf("session runs on %q, want the demo agent %q", s.AgentID, agents.Items[0].ID)
			}
			// ...as real objects in the local cluster, applied by the agent.
			d.expectDeployment("streamspace-demo", s.ID)

			// The printed walk-through does the same with curl alone.
			out, err := exec.Command("bash", "-c", b.script).CombinedOutput()
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if err != nil || !strings.HasSuffix(lines[len(lines)-1], ": Running") {
				d.fatalf("the printed walk-through: %v\n%s\nscript:\n%s", err, out, b.script)
			}
		} else if b.tenant != first.tenant || b.email != first.email || b.password != first.password {
			d.fatalf("round 2 printed other credentials: %+v, round 1 %+v", b, first)
		}

		d.stop()
		if _, err := os.Stat(filepath.Join(dataDir, "postgres", "data", "PG_VERSION")); err != nil {
			t.Fatalf("no cluster in the data folder: %v", err)
		}
		if left := processesUsing(dataDir); len(left) > 0 {
			t.Fatalf("round %d: processes left running after SIGTERM:\n%s", round, strings.Join(left, "\n"))
		}
	}
}

// banner is what `streamspace dev` prints on stdout once everything is up.
type banner struct {
	base, tenant, email, password, agent string
	script                               string
}

// devProc is one running `streamspace dev`.
type devProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	banner banner
	cancel context.CancelFunc

	mu     sync.Mutex
	stderr bytes.Buffer
}

// startDev starts `streamspace dev` on a free port and waits for its banner.
func startDev(t *testing.T, bin, dataDir string) *devProc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	port := freePort(t)
	// The agents' port too is a free one: other tests may hold the default 7443.
	cmd := exec.CommandContext(ctx, bin, "dev", "--data-dir", dataDir, "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--agent-listen", "127.0.0.1:0")
	cmd.Env = append(filterEnv(os.Environ(), "DATABASE_URL"), "STREAMSPACE_LOG_LEVEL=info")
	d := &devProc{t: t, cmd: cmd, cancel: cancel}
	cmd.Stderr = &lockedWriter{mu: &d.mu, w: &d.stderr}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
		}
		cancel()
	})
	lines := make(chan string, 1000)
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			lines <- s.Text()
		}
		close(lines)
	}()
	var out []string
	deadline := time.After(3 * time.Minute)
	for done := false; !done; {
		select {
		case l, ok := <-lines:
			if !ok {
				d.fatalf("streamspace dev exited before printing its banner; stdout:\n%s", strings.Join(out, "\n"))
			}
			out = append(out, l)
			done = l == "# --- end ---"
		case <-deadline:
			d.fatalf("no banner after 3 minutes; stdout:\n%s", strings.Join(out, "\n"))
		}
	}
	go func() {
		for range lines { // keep the pipe drained
		}
	}()
	d.banner = parseBanner(out)
	if d.banner.base != fmt.Sprintf("http://127.0.0.1:%d", port) || d.banner.password == "" || d.banner.script == "" {
		d.fatalf("banner not understood: %+v\n%s", d.banner, strings.Join(out, "\n"))
	}
	return d
}

// parseBanner reads the "  Label:  value" lines and the walk-through of the banner.
func parseBanner(lines []string) banner {
	var b banner
	field := func(l, label string) (string, bool) {
		rest, ok := strings.CutPrefix(strings.TrimSpace(l), label+":")
		if !ok {
			return "", false
		}
		return strings.Fields(rest + " ")[0], true
	}
	var script []string
	in := false
	for _, l := range lines {
		if v, ok := field(l, "API and portal"); ok {
			b.base = v
		} else if v, ok := field(l, "Demo tenant"); ok {
			b.tenant = v
		} else if v, ok := field(l, "Demo user"); ok {
			b.email = v
		} else if v, ok := field(l, "Password"); ok {
			b.password = v
		} else if rest, ok := strings.CutPrefix(strings.TrimSpace(l), "Agent:"); ok {
			b.agent = strings.TrimSpace(rest)
		}
		switch {
		case l == "# --- streamspace dev: try it ---":
			in = true
		case l == "# --- end ---":
			in = false
		case in:
			script = append(script, l)
		}
	}
	b.script = strings.Join(script, "\n")
	return b
}

func (d *devProc) fatalf(format string, args ...any) {
	d.t.Helper()
	d.mu.Lock()
	logs := d.stderr.String()
	d.mu.Unlock()
	if len(logs) > 20000 {
		logs = "…" + logs[len(logs)-20000:]
	}
	d.t.Fatalf(format+"\n--- streamspace dev stderr:\n%s", append(args, logs)...)
}

// stop sends SIGTERM and expects a clean exit.
func (d *devProc) stop() {
	d.t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		d.t.Fatal(err)
	}
	if err := d.cmd.Wait(); err != nil {
		d.fatalf("streamspace dev exited with %v", err)
	}
	d.cancel()
	d.mu.Lock()
	logs := d.stderr.String()
	d.mu.Unlock()
	for _, step := range []string{"shutdown step 1: stopping the demo agent", "shutdown step 4: stopping the local Kubernetes cluster"} {
		if !strings.Contains(logs, step) {
			d.fatalf("no %q in the output", step)
		}
	}
}

// expectDeployment finds the session's Deployment in the local cluster through the
// admin kubeconfig the dev command wrote.
func (d *devProc) expectDeployment(ns, session string) {
	d.t.Helper()
	dataDir := d.cmd.Args[3]
	raw, err := os.ReadFile(filepath.Join(dataDir, "kube", "kubeconfig"))
	if err != nil {
		d.fatalf("reading the local cluster's kubeconfig: %v", err)
	}
	kc := map[string]string{}
	for _, l := range strings.Split(string(raw), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), ": "); ok {
			kc[k] = v
		}
	}
	dec := func(k string) []byte {
		b, err := base64.StdEncoding.DecodeString(kc[k])
		if err != nil {
			d.fatalf("kubeconfig %s: %v", k, err)
		}
		return b
	}
	cert, err := tls.X509KeyPair(dec("client-certificate-data"), dec("client-key-data"))
	if err != nil {
		d.fatalf("kubeconfig client certificate: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(dec("certificate-authority-data"))
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}}
	// The Kubernetes backend labels every object of a session with its id.
	resp, err := client.Get(kc["server"] + "/apis/apps/v1/namespaces/" + ns + "/deployments?labelSelector=" + url.QueryEscape("streamspace.dev/session="+session))
	if err != nil {
		d.fatalf("listing Deployments: %v", err)
	}
	defer resp.Body.Close()
	var list struct {
		Items []struct {
			Metadata struct{ Name string }
			Status   struct {
				ReadyReplicas int `json:"readyReplicas"`
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil || resp.StatusCode != 200 {
		d.fatalf("listing Deployments: %d %v", resp.StatusCode, err)
	}
	if len(list.Items) != 1 || list.Items[0].Status.ReadyReplicas < 1 {
		d.fatalf("session %s in namespace %s: Deployments %+v, want one with a ready replica", session, ns, list.Items)
	}
}

// processesUsing lists the processes whose command line names dir, except PostgreSQL's
// (kept running by design).
func processesUsing(dir string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		cmdline := strings.ReplaceAll(string(bytes.TrimRight(b, "\x00")), "\x00", " ")
		if strings.Contains(cmdline, dir) && !strings.Contains(cmdline, filepath.Join(dir, "postgres")) {
			out = append(out, e.Name()+": "+cmdline)
		}
	}
	return out
}

// apiCaller calls the dev command's API and fails the test on an unexpected status.
type apiCaller struct {
	d    *devProc
	base string
}

func (a *apiCaller) call(method, path, token string, in, out any, want int) {
	a.d.t.Helper()
	var body io.Reader
	if in != nil {
		j, _ := json.Marshal(in)
		body = bytes.NewReader(j)
	}
	req, _ := http.NewRequest(method, a.base+path, body)
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.d.fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		a.d.fatalf("%s %s: %d, want %d: %s", method, path, resp.StatusCode, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			a.d.fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func filterEnv(env []string, drop string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, drop+"=") {
			out = append(out, kv)
		}
	}
	return out
}
