package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"streamspace.dev/libs/pgserver"
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
// migrate, serve, stop cleanly on SIGTERM, and reuse its cluster on the next start.
func TestDevStartsFromNothing(t *testing.T) {
	bin := build(t, "streamspace.dev/services/streamspace/cmd/streamspace")
	dataDir := filepath.Join(t.TempDir(), "state")
	t.Cleanup(func() {
		// The cluster outlives the binary by design; this test's must not outlive the test.
		if err := pgserver.StopDir(context.Background(), filepath.Join(dataDir, "postgres")); err != nil {
			t.Errorf("stopping the private cluster: %v", err)
		}
	})
	for round := 1; round <= 2; round++ {
		port := freePort(t)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		cmd := exec.CommandContext(ctx, bin, "dev", "--data-dir", dataDir, "--listen", fmt.Sprintf("127.0.0.1:%d", port))
		cmd.Env = append(filterEnv(os.Environ(), "DATABASE_URL"), "STREAMSPACE_LOG_LEVEL=info")
		stderr, _ := cmd.StderrPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		logs := make(chan string, 1000)
		go func() {
			s := bufio.NewScanner(stderr)
			for s.Scan() {
				logs <- s.Text()
			}
			close(logs)
		}()
		base := fmt.Sprintf("http://127.0.0.1:%d", port)
		waitReady(t, base, logs)
		for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
			resp, err := http.Get(base + path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("round %d: %s answered %d", round, path, resp.StatusCode)
			}
		}
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("round %d: streamspace dev exited with %v", round, err)
		}
		cancel()
		if _, err := os.Stat(filepath.Join(dataDir, "postgres", "data", "PG_VERSION")); err != nil {
			t.Fatalf("no cluster in the data folder: %v", err)
		}
	}
}

func waitReady(t *testing.T, base string, logs <-chan string) {
	t.Helper()
	var seen []string
	deadline := time.After(90 * time.Second)
	for {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case l, ok := <-logs:
			if ok {
				seen = append(seen, l)
			}
		case <-deadline:
			t.Fatalf("streamspace dev never became ready; its output:\n%s", strings.Join(seen, "\n"))
		case <-time.After(50 * time.Millisecond):
		}
	}
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
