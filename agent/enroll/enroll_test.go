package enroll_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"streamspace.dev/agent/enroll"
	"streamspace.dev/agent/internal/testpki"
	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/wire"
)

const (
	tenantID = "abcdefghijkl"
	agentID  = "agt_abcdefghijklmnopqrst"
	token    = "enroll-token-1"
)

// endpoint stands in for the gateway's enrollment endpoint only: real TLS, real HTTP,
// real CSR checking and signing. It accepts token once, as identity's one-time tokens do.
type endpoint struct {
	ca    *testpki.CA
	calls atomic.Int32
	used  atomic.Bool
	// bodies records what the agent sent, to prove the key never left it.
	bodies chan string
	// fail, when set, answers every call with this problem.
	fail error
}

func (e *endpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.calls.Add(1)
	raw, _ := io.ReadAll(r.Body)
	select {
	case e.bodies <- string(raw):
	default:
	}
	if e.fail != nil {
		apperr.WriteHTTP(w, r.URL.Path, e.fail)
		return
	}
	var req enroll.Request
	if r.Method != http.MethodPost || json.Unmarshal(raw, &req) != nil {
		apperr.WriteHTTP(w, r.URL.Path, apperr.New(apperr.Invalid, "bad request"))
		return
	}
	if req.Token != token || !e.used.CompareAndSwap(false, true) {
		apperr.WriteHTTP(w, r.URL.Path, apperr.New(apperr.Unauthenticated, "enrollment token unknown, expired or used"))
		return
	}
	cert, err := e.ca.SignCSR(req.CSRPEM, tenantID, agentID, time.Now().Add(-time.Minute), 30*24*time.Hour)
	if err != nil {
		apperr.WriteHTTP(w, r.URL.Path, apperr.Wrap(err, apperr.Invalid, "invalid CSR"))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(enroll.Response{AgentID: agentID, TenantID: tenantID, CertificatePEM: cert, CAPEM: string(e.ca.PEM)})
}

func newEndpoint(t *testing.T) (*endpoint, *enroll.Client) {
	t.Helper()
	e := &endpoint{ca: testpki.New(t), bodies: make(chan string, 8)}
	srv := httptest.NewTLSServer(e)
	t.Cleanup(srv.Close)
	return e, &enroll.Client{URL: srv.URL + "/api/v1/agents/enroll", HTTP: srv.Client()}
}

func TestEnrollOnceThenReuse(t *testing.T) {
	t.Parallel()
	e, client := newEndpoint(t)
	dir := t.TempDir()
	src := enroll.Source{Store: enroll.Store{Dir: filepath.Join(dir, "state")}, Token: token, Client: client, Name: "edge-1"}

	c, err := enroll.Obtain(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	if c.Agent != agentID || c.Tenant != tenantID {
		t.Fatalf("identity = %s/%s", c.Tenant, c.Agent)
	}
	body := <-e.bodies
	if strings.Contains(body, "PRIVATE KEY") || !strings.Contains(body, "CERTIFICATE REQUEST") {
		t.Fatalf("enrollment body must carry a CSR and no key: %s", body)
	}
	fi, err := os.Stat(filepath.Join(dir, "state", "agent.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("agent.pem mode = %v, want 0600", fi.Mode().Perm())
	}
	if ca, err := src.Store.LoadCA(); err != nil || !strings.Contains(string(ca), "BEGIN CERTIFICATE") {
		t.Fatalf("CA not saved: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "state"))
	for _, en := range entries {
		if strings.HasPrefix(en.Name(), ".") {
			t.Fatalf("temporary file %s left behind", en.Name())
		}
	}

	// Second start: the token is spent, yet the agent starts from its saved identity
	// without calling the endpoint.
	again, err := enroll.Obtain(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	if e.calls.Load() != 1 {
		t.Fatalf("endpoint called %d times, want 1", e.calls.Load())
	}
	if !again.Leaf().Equal(c.Leaf()) {
		t.Fatal("reloaded a different certificate")
	}
}

func TestEnrollErrorsCarryRetryPolicy(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		fail      error
		token     string
		wantRetry bool
		wantAfter time.Duration
	}{
		{"wrong token is permanent", nil, "stolen", false, 0},
		{"unavailable is retried after the hint", &apperr.Error{Code: apperr.Unavailable, Message: "draining", RetryAfter: 7 * time.Second}, token, true, 7 * time.Second},
		{"rate limited is retried", &apperr.Error{Code: apperr.RateLimited, Message: "slow down"}, token, true, 0},
		{"forbidden is permanent", apperr.New(apperr.Forbidden, "tenant suspended"), token, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e, client := newEndpoint(t)
			e.fail = tt.fail
			_, err := enroll.Obtain(context.Background(), enroll.Source{Store: enroll.Store{Dir: t.TempDir()}, Token: tt.token, Client: client})
			if err == nil {
				t.Fatal("enrolled")
			}
			retry, after := wire.Retryable(err)
			if retry != tt.wantRetry || after != tt.wantAfter {
				t.Fatalf("Retryable(%v) = %v, %v; want %v, %v", err, retry, after, tt.wantRetry, tt.wantAfter)
			}
		})
	}
}

func TestUnreachableEndpointIsRetryable(t *testing.T) {
	t.Parallel()
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	client := &enroll.Client{URL: srv.URL, HTTP: srv.Client()}
	srv.Close()
	_, err := enroll.Obtain(context.Background(), enroll.Source{Store: enroll.Store{Dir: t.TempDir()}, Token: token, Client: client})
	if retry, _ := wire.Retryable(err); err == nil || !retry {
		t.Fatalf("err = %v, want retryable", err)
	}
}

func TestNoCredentialIsPermanent(t *testing.T) {
	t.Parallel()
	_, err := enroll.Obtain(context.Background(), enroll.Source{Store: enroll.Store{Dir: t.TempDir()}})
	if !errors.Is(err, enroll.ErrNoCredential) {
		t.Fatalf("err = %v", err)
	}
	if retry, _ := wire.Retryable(err); retry {
		t.Fatal("no credential must not be retried")
	}
}

func TestMountedFilesAndNewerRenewalInState(t *testing.T) {
	t.Parallel()
	ca := testpki.New(t)
	dir := t.TempDir()
	certPEM, keyPEM := ca.AgentPair(t, tenantID, agentID, time.Now().Add(-time.Hour), 24*time.Hour)
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	store := enroll.Store{Dir: filepath.Join(dir, "state")}
	src := enroll.Source{Store: store, CertFile: certFile, KeyFile: keyFile}
	mounted, err := enroll.Obtain(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	if mounted.Agent != agentID {
		t.Fatalf("agent = %s", mounted.Agent)
	}

	// Renew over a stand-in for the tunnel; the Secret cannot be written back, so the
	// state directory must win from now on.
	h := enroll.NewHolder(mounted, store)
	renewed, err := h.Renew(context.Background(), func(_ context.Context, csr string) (string, error) {
		return ca.SignCSR(csr, tenantID, agentID, time.Now().Add(-time.Minute), 48*time.Hour)
	})
	if err != nil {
		t.Fatal(err)
	}
	if h.Current() != renewed {
		t.Fatal("holder did not swap to the renewed credential")
	}
	got, err := enroll.Obtain(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Leaf().Equal(renewed.Leaf()) {
		t.Fatal("restart used the mounted certificate instead of the newer renewal")
	}
}

func TestRenewRefusesAnotherIdentityAndKeepsCurrent(t *testing.T) {
	t.Parallel()
	ca := testpki.New(t)
	certPEM, keyPEM := ca.AgentPair(t, tenantID, agentID, time.Now().Add(-time.Hour), 24*time.Hour)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "c"), certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "k"), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cur, err := enroll.LoadFiles(filepath.Join(dir, "c"), filepath.Join(dir, "k"))
	if err != nil {
		t.Fatal(err)
	}
	store := enroll.Store{Dir: filepath.Join(dir, "state")}
	h := enroll.NewHolder(cur, store)
	_, err = h.Renew(context.Background(), func(_ context.Context, csr string) (string, error) {
		return ca.SignCSR(csr, tenantID, "agt_someoneelse2222222", time.Now(), time.Hour)
	})
	if err == nil {
		t.Fatal("accepted a certificate for another agent")
	}
	if h.Current() != cur {
		t.Fatal("current credential replaced after a failed renewal")
	}
	if _, err := store.Load(); err == nil {
		t.Fatal("a failed renewal saved something")
	}
}

func TestRenewAtTwoThirdsOfLifetime(t *testing.T) {
	t.Parallel()
	ca := testpki.New(t)
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	certPEM, keyPEM := ca.AgentPair(t, tenantID, agentID, start, 30*24*time.Hour)
	dir := t.TempDir()
	_ = os.WriteFile(filepath.Join(dir, "c"), certPEM, 0o600)
	_ = os.WriteFile(filepath.Join(dir, "k"), keyPEM, 0o600)
	c, err := enroll.LoadFiles(filepath.Join(dir, "c"), filepath.Join(dir, "k"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.RenewAt(), start.Add(20*24*time.Hour); !got.Equal(want) {
		t.Fatalf("RenewAt = %v, want %v", got, want)
	}
}
