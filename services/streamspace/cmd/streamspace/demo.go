package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"time"

	gateway "streamspace.dev/services/agent-gateway"
	"streamspace.dev/services/identity"
)

// The demo account of `streamspace dev`. The password is random per data directory.
const (
	demoTenantName = "Demo"
	demoTenant     = "demo"
	demoEmail      = "demo@example.com"
	demoAgentName  = "demo-cluster"
)

// demoAccount is the demo owner's credentials, as kept in <data-dir>/demo.json, and a
// fresh access token.
type demoAccount struct {
	Tenant   string `json:"tenant"`
	Email    string `json:"email"`
	Password string `json:"password"`
	token    string
}

// apiClient calls the control plane's public API, as the printed curl lines do.
type apiClient struct{ base string }

// call sends in as JSON and decodes a 2xx answer into out; another status is an
// *apiStatus error carrying the problem body.
func (a *apiClient) call(ctx context.Context, method, path, token string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return &apiStatus{method: method, path: path, code: resp.StatusCode, body: string(bytes.TrimSpace(b))}
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// apiStatus is a non-2xx answer of the API.
type apiStatus struct {
	method, path string
	code         int
	body         string
}

func (e *apiStatus) Error() string {
	return fmt.Sprintf("%s %s: %d %s", e.method, e.path, e.code, e.body)
}

// ensureDemo returns the demo owner signed in: it signs in with the credentials kept in
// dataDir/demo.json, and on the first start (no file, or a tenant that was never
// created) generates a password, keeps it, and signs the tenant up.
func ensureDemo(ctx context.Context, api *apiClient, dataDir string) (demoAccount, error) {
	path := filepath.Join(dataDir, "demo.json")
	var d demoAccount
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &d); err != nil || d.Password == "" {
			return d, fmt.Errorf("%s is damaged (%v): remove it and the database with `task clean`", path, err)
		}
	case errors.Is(err, fs.ErrNotExist):
		raw := make([]byte, 18)
		if _, err := rand.Read(raw); err != nil {
			return d, err
		}
		d = demoAccount{Tenant: demoTenant, Email: demoEmail, Password: base64.RawURLEncoding.EncodeToString(raw)}
		j, _ := json.MarshalIndent(d, "", "  ")
		// Kept before sign-up, so a crash in between cannot leave a tenant whose
		// password nobody knows.
		if err := os.MkdirAll(dataDir, 0o700); err != nil {
			return d, err
		}
		if err := os.WriteFile(path, append(j, '\n'), 0o600); err != nil {
			return d, err
		}
	default:
		return d, err
	}

	var tok identity.Tokens
	err = api.call(ctx, "POST", "/api/v1/auth/login", "", identity.Credentials{Tenant: d.Tenant, Email: d.Email, Password: d.Password}, &tok)
	if st, ok := errors.AsType[*apiStatus](err); ok && st.code == http.StatusUnauthorized {
		var res identity.SignupResult
		err = api.call(ctx, "POST", "/api/v1/signup", "", identity.Signup{TenantName: demoTenantName, Slug: d.Tenant, Email: d.Email, Password: d.Password}, &res)
		if st, ok := errors.AsType[*apiStatus](err); ok && st.code == http.StatusConflict {
			return d, fmt.Errorf("tenant %q exists but does not accept the password in %s; `task clean` resets all local state", d.Tenant, path)
		}
		tok = res.Tokens
	}
	if err != nil {
		return d, err
	}
	d.token = tok.AccessToken
	return d, nil
}

// enrolled reports whether the agent in stateDir holds a certificate (enroll.Store's
// agent.pem), so needs no enrollment token.
func enrolled(stateDir string) bool {
	_, err := os.Stat(filepath.Join(stateDir, "agent.pem"))
	return err == nil
}

// createEnrollmentToken creates a one-time token for the demo agent through the API and
// writes it to a file in stateDir, which the agent reads (a flag would show in ps).
func createEnrollmentToken(ctx context.Context, api *apiClient, d demoAccount, stateDir string) (string, error) {
	var tok identity.CreatedEnrollmentToken
	if err := api.call(ctx, "POST", "/api/v1/enrollment-tokens", d.token, identity.NewEnrollmentToken{Name: demoAgentName}, &tok); err != nil {
		return "", err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return "", err
	}
	path := filepath.Join(stateDir, "enrollment-token")
	return path, os.WriteFile(path, []byte(tok.Token+"\n"), 0o600)
}

// agentSummary is the demo agent as the API lists it.
type agentSummary struct {
	Name, State string
	Facts       map[string]string
}

// waitAgentOnline waits until the API lists the demo agent online.
func waitAgentOnline(ctx context.Context, api *apiClient, d demoAccount) (agentSummary, error) {
	deadline := time.Now().Add(time.Minute)
	var last agentSummary
	for {
		var list gateway.ListResponse[gateway.Agent]
		if err := api.call(ctx, "GET", "/api/v1/agents", d.token, nil, &list); err != nil {
			return last, err
		}
		for _, a := range list.Items {
			if a.Name == demoAgentName {
				last = agentSummary{Name: a.Name, State: string(a.State), Facts: a.Facts}
			}
		}
		if last.State == string(gateway.StateOnline) {
			return last, nil
		}
		if time.Now().After(deadline) {
			return last, fmt.Errorf("not listed online after a minute (state %q)", last.State)
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
