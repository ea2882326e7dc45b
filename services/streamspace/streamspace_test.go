package streamspace_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"streamspace.dev/libs/server"
	"streamspace.dev/services/identity"
	"streamspace.dev/services/streamspace"
	"streamspace.dev/tenants/tenantstest"
)

// testKEK is a fixed key-encryption key (32 zero bytes, base64) for tests.
const testKEK = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="

// TestAllInOneServesEveryModule runs the all-in-one server on a real database and a real
// socket, checks the shared routes, and shuts it down through its context.
func TestAllInOneServesEveryModule(t *testing.T) {
	env := tenantstest.New(t)
	env.Tenant(t, "acme") // a tenant for the start-up migration to visit
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var names []string
	go func() {
		done <- server.Run(ctx, server.Config{Name: "streamspace", Listen: "127.0.0.1:0", DatabaseURL: env.URL,
			LogLevel: "warn", ShutdownTimeout: shutdownTimeout, MaxConns: 4},
			server.Options{Listener: ln, Before: func(ctx context.Context, pool *pgxpool.Pool) error {
				return streamspace.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
			}},
			func(d server.Deps) ([]server.Module, error) {
				mods, err := streamspace.Modules(d, identity.Config{KEK: testKEK})
				for _, m := range mods {
					names = append(names, m.Name())
				}
				return mods, err
			})
	}()
	base := "http://" + ln.Addr().String()
	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if code, _ := get("/readyz"); code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("never became ready")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz %d", code)
	}
	code, body := get("/metrics")
	if code != http.StatusOK || !strings.Contains(body, "http_server_requests_total") || !strings.Contains(body, "go_goroutines") {
		t.Fatalf("/metrics %d:\n%.400s", code, body)
	}
	if code, body := get("/api/v1/nothing-here"); code != http.StatusNotFound || !strings.Contains(body, `"code":"not_found"`) {
		t.Fatalf("unknown route %d %s", code, body)
	}
	if got := strings.Join(names, ","); got != "identity,catalog,scheduler,sessions,agent-gateway" {
		t.Fatalf("modules %s", got)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("did not shut down")
	}
}
