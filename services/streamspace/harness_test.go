package streamspace_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/server"
	gateway "streamspace.dev/services/agent-gateway"
	"streamspace.dev/services/identity"
	sessions "streamspace.dev/services/sessions/module"
	"streamspace.dev/services/streamspace"
	"streamspace.dev/tenants/tenantstest"
)

// shutdownTimeout is the test servers' drain deadline. It must exceed net/http's 5 s
// grace for connections that have not sent a request yet (Go's client dials spare ones
// under load): with 5 s, Shutdown could report a cut-short drain for an idle client.
const shutdownTimeout = 15 * time.Second

// plane is the all-in-one control plane running on a real socket and a fresh real
// database for one test; the flow tests drive it only through its HTTP API.
type plane struct {
	t        testing.TB
	Env      *tenantstest.Env
	Base     string
	Gateway  *gateway.Module
	Sessions *sessions.Module
	// stop shuts the plane down as a signal would, once, and returns what the server
	// returned; the test's cleanup calls it too.
	stop func() error
}

// startPlane runs every service in-process, as `streamspace serve --migrate` does, and
// waits until /readyz answers. It stops when the test or benchmark ends.
func startPlane(t testing.TB) *plane {
	t.Helper()
	return startPlaneWith(t, nil)
}

// startPlaneWith is startPlane with the services' settings changed by set, if not nil.
func startPlaneWith(t testing.TB, set func(*streamspace.Settings)) *plane {
	t.Helper()
	return startPlaneOn(t, tenantstest.New(t), set, nil)
}

// startPlaneOn is startPlaneWith on an existing database (a second plane on the database
// of the first is another replica of every service) and with pool, if not nil, adjusting
// the server's pool configuration (a benchmark counts round trips with it).
func startPlaneOn(t testing.TB, env *tenantstest.Env, set func(*streamspace.Settings), pool func(*pgxpool.Config)) *plane {
	t.Helper()
	settings := streamspace.Settings{Identity: identity.Config{KEK: testKEK}}
	if set != nil {
		set(&settings)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var gw atomic.Pointer[gateway.Module]
	var sm atomic.Pointer[sessions.Module]
	go func() {
		done <- server.Run(ctx, server.Config{Name: "streamspace", Listen: "127.0.0.1:0", DatabaseURL: env.URL,
			LogLevel: "warn", ShutdownTimeout: shutdownTimeout, MaxConns: 20, Issuer: server.DefaultIssuer, Audience: auth.DefaultAudience},
			server.Options{Listener: ln, Before: func(ctx context.Context, pool *pgxpool.Pool) error {
				return streamspace.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
			}, Pool: pool},
			func(d server.Deps) ([]server.Module, error) {
				mods, err := streamspace.ModulesWith(d, settings)
				for _, m := range mods {
					switch m := m.(type) {
					case *gateway.Module:
						gw.Store(m)
					case *sessions.Module:
						sm.Store(m)
					}
				}
				return mods, err
			})
	}()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			runErr = <-done
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("server: %v", err)
		}
	})
	p := &plane{t: t, Env: env, Base: "http://" + ln.Addr().String(), stop: stop}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-done:
			t.Fatalf("server stopped before it was ready: %v", err)
		default:
		}
		resp, err := http.Get(p.Base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				p.Gateway, p.Sessions = gw.Load(), sm.Load()
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the control plane never became ready")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// call sends one request and fails the test unless the status is want. A []byte body is
// sent as YAML, any other non-nil body as JSON; out, if not nil, receives the JSON reply.
func (p *plane) call(method, path, token string, body any, header http.Header, out any, want int) http.Header {
	t := p.t
	t.Helper()
	req, err := http.NewRequest(method, p.Base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	switch b := body.(type) {
	case nil:
	case []byte:
		req.Body = io.NopCloser(bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/yaml")
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		req.Body = io.NopCloser(bytes.NewReader(j))
		req.Header.Set("Content-Type", "application/json")
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %d, want %d: %s", method, path, resp.StatusCode, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
	return resp.Header
}
