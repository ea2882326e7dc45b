package gateway_test

import (
	"crypto/x509"
	"testing"

	gateway "streamspace.dev/services/agent-gateway"
)

// FuzzParseCSR feeds the enrollment endpoint's decoder of untrusted bytes: it must never
// panic, and whatever it accepts must carry a verified self-signature.
func FuzzParseCSR(f *testing.F) {
	_, good := csr(f, "spiffe://streamspace/tenant/aaaaaaaaaaaa/agent/agt_aaaaaaaaaaaaaaaaaaaa")
	f.Add(good)
	f.Add("")
	f.Add("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
	f.Add(tamper(good))
	f.Fuzz(func(t *testing.T, s string) {
		c, err := gateway.ParseCSR(s)
		if err == nil && c.CheckSignature() != nil {
			t.Fatal("accepted a CSR whose signature does not verify")
		}
	})
}

// FuzzIdentityOf checks the URI-SAN parser that names an agent: it accepts exactly one
// well-formed agent URI and nothing else.
func FuzzIdentityOf(f *testing.F) {
	for _, s := range []string{"spiffe://streamspace/tenant/aaaaaaaaaaaa/agent/agt_aaaaaaaaaaaaaaaaaaaa",
		"spiffe://streamspace/tenant/aaaaaaaaaaaa/agent/agt_aaaaaaaaaaaaaaaaaaaa/..", "spiffe://other/tenant/x/agent/y", "https://streamspace/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := parseURL(s)
		if err != nil {
			return
		}
		id, err := gateway.IdentityOf(&x509.Certificate{URIs: u})
		if err == nil && gateway.AgentURI(id.Tenant, id.Agent).String() != u[0].String() {
			t.Fatalf("accepted %q as %+v", s, id)
		}
	})
}

func TestIdentityOfRejectsLookalikes(t *testing.T) {
	t.Parallel()
	good := "spiffe://streamspace/tenant/aaaaaaaaaaaa/agent/agt_aaaaaaaaaaaaaaaaaaaa"
	for _, s := range []string{
		"spiffe://evil@streamspace/tenant/aaaaaaaaaaaa/agent/agt_aaaaaaaaaaaaaaaaaaaa",
		"spiffe://streamspace:443/tenant/aaaaaaaaaaaa/agent/agt_aaaaaaaaaaaaaaaaaaaa",
		"spiffe://streamspace/tenant/aaaaaaaaaaaa/agent/agt_aaaaaaaaaaaaaaaaaaaa?x",
		"spiffe://streamspace/tenant/aaaaaaaaaaaa/agent/agt_aaaaaaaaaaaaaaaaaaaa#x",
		"spiffe://streamspace/tenant/aaaaaaaaaaaa/agent%2Fagt_aaaaaaaaaaaaaaaaaaaa",
		"spiffe://streamspace/tenant/AAAAAAAAAAAA/agent/agt_aaaaaaaaaaaaaaaaaaaa",
		"spiffe://streamspace/tenant/aaaaaaaaaaaa/agent/agt_aaaaaaaaaaaaaaaaaaaa/",
	} {
		u, _ := parseURL(s)
		if id, err := gateway.IdentityOf(&x509.Certificate{URIs: u}); err == nil {
			t.Errorf("%q accepted as %+v", s, id)
		}
	}
	g, _ := parseURL(good)
	two := append(g, g[0])
	if _, err := gateway.IdentityOf(&x509.Certificate{URIs: two}); err == nil {
		t.Error("two agent URIs accepted")
	}
	if _, err := gateway.IdentityOf(&x509.Certificate{URIs: g}); err != nil {
		t.Error(err)
	}
}
