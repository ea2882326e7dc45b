package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/kitx"
	"streamspace.dev/libs/tenant"
)

// Paths of the enrollment listener (and of the main API, where the module also mounts
// enrollment for installs whose edge terminates TLS).
const (
	EnrollPath = "/api/v1/agents/enroll"
	CAPath     = "/api/v1/agents/ca.pem"
)

// maxEnrollBody bounds an enrollment request: a token and a CSR.
const maxEnrollBody = 32 << 10

// Enroll exchanges a one-time enrollment token and a CSR for a client certificate. The
// agent id is minted here and the tenant, name and tags come from the token; nothing in
// the CSR but its public key is used, so a CSR asking for another tenant's or agent's
// name gets a certificate for the token's. Invalid: bad CSR (checked before the token is
// spent); Unauthenticated: the token is unknown, expired, revoked or used.
func (g *Gateway) Enroll(ctx context.Context, req EnrollRequest) (EnrollResponse, error) {
	ctx, span := g.tracer.Start(ctx, "agent.enroll", trace.WithSpanKind(trace.SpanKindServer))
	defer span.End()
	resp, err := g.enroll(ctx, req)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, string(apperr.CodeOf(err)))
		return resp, err
	}
	span.SetAttributes(attribute.String("streamspace.tenant_id", string(resp.TenantID)), attribute.String("streamspace.agent_id", string(resp.AgentID)))
	return resp, nil
}

func (g *Gateway) enroll(ctx context.Context, req EnrollRequest) (EnrollResponse, error) {
	csr, err := ParseCSR(req.CSRPEM)
	if err != nil {
		return EnrollResponse{}, err
	}
	if strings.TrimSpace(req.Token) == "" {
		return EnrollResponse{}, apperr.New(apperr.Unauthenticated, "an enrollment token is required")
	}
	if g.enroller == nil {
		return EnrollResponse{}, apperr.New(apperr.Unavailable, "enrollment is not configured on this gateway")
	}
	e, err := g.enroller.ConsumeEnrollmentToken(ctx, req.Token)
	if err != nil {
		return EnrollResponse{}, err
	}
	if _, err := tenant.ParseID(string(e.Tenant)); err != nil {
		return EnrollResponse{}, fmt.Errorf("identity returned a bad tenant id: %w", err)
	}
	id := Identity{Tenant: e.Tenant, Agent: NewAgentID()}
	sctx := auth.AsSystem(ctx, e.Tenant, "agent-gateway.enroll")
	name := strings.TrimSpace(e.Name)
	if name == "" {
		name = string(id.Agent)
	}
	tags, err := normalizeTags(e.Tags)
	if err != nil {
		tags = []string{} // the token's tags were valid when identity stored them; do not fail the agent over them
	}
	if err := g.store.CreateAgent(sctx, Agent{ID: id.Agent, Name: name, Tags: tags}, e.TokenID); err != nil {
		return EnrollResponse{}, fmt.Errorf("registering the agent: %w", err)
	}
	certPEM, serial, notAfter, err := g.ca.IssueAgent(csr, id, g.cfg.CertTTL)
	if err == nil {
		err = g.store.SetCert(sctx, id.Agent, serial, notAfter)
	}
	if err != nil {
		// The token is spent; the agent record without a certificate is harmless and
		// an admin can delete it.
		return EnrollResponse{}, err
	}
	g.log.InfoContext(ctx, "agent enrolled", "tenant_id", id.Tenant, "agent_id", id.Agent, "name", name)
	return EnrollResponse{AgentID: id.Agent, TenantID: id.Tenant, CertificatePEM: certPEM, CAPEM: g.ca.PEM(), NotAfter: notAfter}, nil
}

// renew signs a new certificate for an agent whose tunnel is already authenticated; the
// names are the tunnel's, whatever the CSR says.
func (g *Gateway) renew(ctx context.Context, id Identity, csrPEM string) (string, error) {
	ctx, span := g.tracer.Start(ctx, "agent.renew", trace.WithAttributes(attribute.String("streamspace.agent_id", string(id.Agent))))
	defer span.End()
	csr, err := ParseCSR(csrPEM)
	if err != nil {
		return "", err
	}
	certPEM, serial, notAfter, err := g.ca.IssueAgent(csr, id, g.cfg.CertTTL)
	if err != nil {
		return "", err
	}
	if err := g.store.SetCert(ctx, id.Agent, serial, notAfter); err != nil {
		return "", err
	}
	g.log.InfoContext(ctx, "agent certificate renewed", "tenant_id", id.Tenant, "agent_id", id.Agent, "not_after", notAfter)
	return certPEM, nil
}

// enrollHandler serves the enrollment listener: enrollment and the CA certificate.
func (g *Gateway) enrollHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST "+EnrollPath, g.EnrollHTTP())
	mux.HandleFunc("GET "+CAPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/x-pem-file")
		_, _ = w.Write([]byte(g.ca.PEM()))
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		apperr.WriteHTTP(w, r.URL.Path, apperr.New(apperr.NotFound, "no route for %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// EnrollHTTP is the enrollment endpoint: JSON EnrollRequest in, EnrollResponse out.
func (g *Gateway) EnrollHTTP() http.Handler {
	decode := kitx.DecodeJSON[EnrollRequest](maxEnrollBody)
	encode := kitx.EncodeJSON(http.StatusCreated)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, err := decode(r.Context(), r)
		if err == nil {
			var resp EnrollResponse
			if resp, err = g.Enroll(r.Context(), req.(EnrollRequest)); err == nil {
				_ = encode(r.Context(), w, resp)
				return
			}
		}
		if apperr.CodeOf(err) == apperr.Internal {
			g.log.ErrorContext(r.Context(), "enrollment failed", "err", err)
		}
		apperr.WriteHTTP(w, r.URL.Path, err)
	})
}

// NewHTTPEnroller consumes enrollment tokens at identity's
// POST /api/v1/agents/enroll/validate, for a gateway running apart from identity.
func NewHTTPEnroller(baseURL string, client *http.Client) Enroller {
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	url := strings.TrimRight(baseURL, "/") + "/api/v1/agents/enroll/validate"
	return EnrollerFunc(func(ctx context.Context, raw string) (Enrollment, error) {
		body, _ := json.Marshal(map[string]string{"token": raw})
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return Enrollment{}, err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return Enrollment{}, apperr.Wrap(err, apperr.Unavailable, "identity is unreachable")
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return Enrollment{}, apperr.FromResponse(resp)
		}
		var e Enrollment
		if err := json.NewDecoder(http.MaxBytesReader(nil, resp.Body, 64<<10)).Decode(&e); err != nil {
			return Enrollment{}, fmt.Errorf("decoding identity's answer: %w", err)
		}
		return e, nil
	})
}
