package streamspace_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"testing"

	gateway "streamspace.dev/services/agent-gateway"
	"streamspace.dev/services/identity"
)

// TestAgentEnrollmentThroughAllInOne enrolls an agent with a token created through the
// API, through the gateway wired to identity in-process, and finds it in the registry.
func TestAgentEnrollmentThroughAllInOne(t *testing.T) {
	p := startPlane(t)
	var signup identity.SignupResult
	p.call("POST", "/api/v1/signup", "", identity.Signup{TenantName: "Hooli", Slug: "hooli", Email: "g@hooli.test", Password: "a long enough passphrase"}, nil, &signup, 201)
	admin := signup.Tokens.AccessToken
	var tok identity.CreatedEnrollmentToken
	p.call("POST", "/api/v1/enrollment-tokens", admin, identity.NewEnrollmentToken{Name: "cluster-1", Tags: []string{"gpu"}}, nil, &tok, 201)

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "cluster-1"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	csrPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	var enrolled gateway.EnrollResponse
	p.call("POST", gateway.EnrollPath, "", gateway.EnrollRequest{Token: tok.Token, CSRPEM: csrPEM}, nil, &enrolled, 201)
	if enrolled.TenantID != signup.Tenant.ID || enrolled.CertificatePEM == "" || enrolled.CAPEM == "" {
		t.Fatalf("enrolled %+v", enrolled)
	}
	p.call("POST", gateway.EnrollPath, "", gateway.EnrollRequest{Token: tok.Token, CSRPEM: csrPEM}, nil, nil, 401)

	var agents gateway.ListResponse[gateway.Agent]
	p.call("GET", "/api/v1/agents", admin, nil, nil, &agents, 200)
	if len(agents.Items) != 1 || agents.Items[0].ID != enrolled.AgentID || agents.Items[0].Name != "cluster-1" {
		t.Fatalf("agents %+v", agents.Items)
	}
}
