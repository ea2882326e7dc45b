package enroll

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/tenant"
	"streamspace.dev/libs/wire"
)

// Request is the body of an enrollment call, as services/agent-gateway's EnrollRequest.
type Request struct {
	Token  string `json:"token"`
	CSRPEM string `json:"csr_pem"`
}

// Response is the gateway's answer, as services/agent-gateway's EnrollResponse.
type Response struct {
	AgentID        wire.AgentID `json:"agent_id"`
	TenantID       tenant.ID    `json:"tenant_id"`
	CertificatePEM string       `json:"certificate_pem"`
	// CAPEM is the CA that the gateway's tunnel certificate chains to.
	CAPEM    string    `json:"ca_pem"`
	NotAfter time.Time `json:"not_after"`
}

// maxResponse bounds what Enroll reads: a certificate chain and a CA are a few KiB.
const maxResponse = 1 << 20

// Client calls the gateway's enrollment endpoint.
type Client struct {
	// URL is the full endpoint URL, e.g. https://gateway.example.com/api/v1/agents/enroll.
	URL string
	// HTTP is the client to use; http.DefaultClient when nil. Its transport decides which
	// CAs are trusted for the endpoint.
	HTTP *http.Client
}

// Enroll generates a key, sends a CSR for it with token, and returns the credential and
// the gateway's CA bundle. The key stays in this process.
//
// Errors keep their retry policy: a problem+json answer becomes an *apperr.Error with its
// code and Retry-After (so wire.Retryable says "stop" for a used or expired token, which
// is unauthenticated, and "retry" for unavailable), and network failures are plain errors,
// which are retryable.
func (c *Client) Enroll(ctx context.Context, token, name string) (*Credential, []byte, error) {
	key, err := NewKey()
	if err != nil {
		return nil, nil, fmt.Errorf("generating key: %w", err)
	}
	csr, err := NewCSR(key, name)
	if err != nil {
		return nil, nil, err
	}
	body, err := json.Marshal(Request{Token: token, CSRPEM: csr})
	if err != nil {
		return nil, nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.URL, bytes.NewReader(body))
	if err != nil {
		return nil, nil, fmt.Errorf("enrollment request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("enrolling at %s: %w", c.URL, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, nil, fmt.Errorf("enrolling at %s: %w", c.URL, apperr.FromResponse(resp))
	}
	var out Response
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponse)).Decode(&out); err != nil {
		return nil, nil, fmt.Errorf("enrolling at %s: decoding the answer: %w", c.URL, err)
	}
	cred, err := Assemble(key, out.CertificatePEM)
	if err != nil {
		return nil, nil, &wire.Error{Code: wire.CodeProtocol, Message: "enrollment answer unusable: " + err.Error()}
	}
	if (out.AgentID != "" && out.AgentID != cred.Agent) || (out.TenantID != "" && out.TenantID != cred.Tenant) {
		return nil, nil, &wire.Error{Code: wire.CodeProtocol, Message: "enrollment answer names a different agent than its certificate"}
	}
	return cred, []byte(out.CAPEM), nil
}

// Holder holds the current credential for the tunnel's TLS configuration and swaps it
// atomically on renewal, so a renewal never races a dial: a handshake sees either the old
// pair or the new one, never the new key with the old certificate.
type Holder struct {
	cur   atomic.Pointer[Credential]
	store Store
}

// NewHolder returns a Holder starting with c that saves renewals to store.
func NewHolder(c *Credential, store Store) *Holder {
	h := &Holder{store: store}
	h.cur.Store(c)
	return h
}

// Current returns the credential in use.
func (h *Holder) Current() *Credential { return h.cur.Load() }

// GetClientCertificate is a tls.Config hook presenting the current certificate.
func (h *Holder) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	c := h.cur.Load().Cert
	return &c, nil
}

// Signer asks the gateway to sign a CSR and returns the PEM chain, leaf first. The
// tunnel implements it over a cert stream.
type Signer func(ctx context.Context, csrPEM string) (string, error)

// Renew rotates the key: it generates a new one, has sign certify it, checks that the new
// certificate names the same agent and tenant, saves it, and only then swaps it in. A
// failure at any step leaves the current credential in use and on disk.
func (h *Holder) Renew(ctx context.Context, sign Signer) (*Credential, error) {
	old := h.cur.Load()
	key, err := NewKey()
	if err != nil {
		return nil, fmt.Errorf("generating key: %w", err)
	}
	csr, err := NewCSR(key, string(old.Agent))
	if err != nil {
		return nil, err
	}
	chain, err := sign(ctx, csr)
	if err != nil {
		return nil, fmt.Errorf("renewing certificate: %w", err)
	}
	c, err := Assemble(key, chain)
	if err != nil {
		return nil, &wire.Error{Code: wire.CodeProtocol, Message: "renewed certificate unusable: " + err.Error()}
	}
	if c.Agent != old.Agent || c.Tenant != old.Tenant {
		return nil, &wire.Error{Code: wire.CodeProtocol, Message: fmt.Sprintf("renewed certificate names %s/%s, not %s/%s", c.Tenant, c.Agent, old.Tenant, old.Agent)}
	}
	if err := h.store.Save(c); err != nil {
		return nil, fmt.Errorf("saving renewed certificate: %w", err)
	}
	h.cur.Store(c)
	return c, nil
}
