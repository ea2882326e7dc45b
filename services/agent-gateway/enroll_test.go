package gateway_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/wire"
	gateway "streamspace.dev/services/agent-gateway"
)

func TestEnrollAndConnect(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1)
	tid, ctx := h.tenant("acme")
	e := h.enroll(h.gw(), h.token(ctx, "edge-1", "region=eu", "gpu"))

	if e.resp.TenantID != tid {
		t.Fatalf("tenant %s, want %s", e.resp.TenantID, tid)
	}
	id, err := gateway.IdentityOf(e.leaf)
	if err != nil || id.Tenant != tid || id.Agent != e.resp.AgentID {
		t.Fatalf("certificate names %+v (%v), want %s/%s", id, err, tid, e.resp.AgentID)
	}
	if life := time.Until(e.leaf.NotAfter); life < 29*24*time.Hour || life > 31*24*time.Hour {
		t.Fatalf("certificate lives %s, want about 30 days", life)
	}

	a, err := h.svc().Agent(ctx, e.resp.AgentID)
	if err != nil {
		t.Fatal(err)
	}
	if a.Name != "edge-1" || fmt.Sprint(a.Tags) != "[region=eu gpu]" || a.State != gateway.StateOffline {
		t.Fatalf("registered %+v", a)
	}

	ag := h.connect(h.gw(), e)
	if ag.ack.Accepted != wire.Current || ag.ack.DesiredChecksum != wire.Checksum(nil) || ag.ack.GatewayID != "gw-0" {
		t.Fatalf("hello_ack %+v", ag.ack)
	}
	// The full (empty) set arrives right after the handshake.
	if p := ag.nextPush(5 * time.Second); !p.msgs[0].Full || p.msgs[len(p.msgs)-1].Checksum != wire.Checksum(nil) {
		t.Fatalf("first push %+v", p.msgs)
	}
	eventually(t, 5*time.Second, func() error {
		a, err := h.svc().Agent(ctx, e.resp.AgentID)
		if err != nil {
			return err
		}
		if a.State != gateway.StateOnline || a.Gateway != "gw-0" || a.Version != "test" || a.Facts["platform"] != "kind" ||
			fmt.Sprint(a.ReportedTags) != "[gpu]" || a.Capacity.CPUAllocatableMillis != 4000 {
			return fmt.Errorf("agent %+v", a)
		}
		return nil
	})
	if !h.gw().Connected(e.resp.AgentID) {
		t.Fatal("gateway does not hold the tunnel")
	}
}

// A CSR may ask for any name; the certificate names what the token says.
func TestEnrollIgnoresNamesInCSR(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1)
	tidA, ctxA := h.tenant("alpha")
	tidB, ctxB := h.tenant("bravo")
	victim := h.enroll(h.gw(), h.token(ctxB, "victim"))

	e := h.enroll(h.gw(), h.token(ctxA, "sneaky"),
		gateway.AgentURI(tidB, victim.resp.AgentID).String(), "spiffe://streamspace/tenant/"+string(tidB)+"/agent/agt_aaaaaaaaaaaaaaaaaaaa")
	id, err := gateway.IdentityOf(e.leaf)
	if err != nil {
		t.Fatal(err)
	}
	if id.Tenant != tidA || id.Agent == victim.resp.AgentID || len(e.leaf.URIs) != 1 {
		t.Fatalf("certificate names %+v with URIs %v; want tenant %s and a fresh agent", id, e.leaf.URIs, tidA)
	}
	if e.leaf.Subject.CommonName != string(id.Agent) {
		t.Fatalf("subject %q copied from the CSR", e.leaf.Subject.CommonName)
	}
	// The agent exists in A only.
	if _, err := h.svc().Agent(ctxB, id.Agent); !apperr.IsCode(err, apperr.NotFound) {
		t.Fatalf("tenant B sees A's agent: %v", err)
	}
	if _, err := h.svc().Agent(ctxA, id.Agent); err != nil {
		t.Fatal(err)
	}
}

func TestEnrollmentTokenMisuse(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1)
	_, ctx := h.tenant("acme")
	tidB, ctxB := h.tenant("bravo")
	_, csrPEM := csr(t)

	t.Run("replayed", func(t *testing.T) {
		tok := h.token(ctx, "once")
		h.enroll(h.gw(), tok)
		status, body := postEnroll(t, h.gw(), gateway.EnrollRequest{Token: tok, CSRPEM: csrPEM})
		if status != http.StatusUnauthorized || problemCode(body) != apperr.Unauthenticated {
			t.Fatalf("replay: %d %s", status, body)
		}
	})
	t.Run("expired", func(t *testing.T) {
		tok := h.token(ctx, "stale")
		if _, err := h.env.Pool.Exec(context.Background(), `UPDATE "t_`+string(mustTenant(t, ctx))+`".enrollment_tokens SET expires_at = now() - interval '1 second'`); err != nil {
			t.Fatal(err)
		}
		status, body := postEnroll(t, h.gw(), gateway.EnrollRequest{Token: tok, CSRPEM: csrPEM})
		if status != http.StatusUnauthorized {
			t.Fatalf("expired: %d %s", status, body)
		}
	})
	t.Run("garbage", func(t *testing.T) {
		for _, tok := range []string{"", "nope", "sse_" + string(tidB) + "_AAAA", "sse_zzzzzzzzzzzz_" + "A"} {
			status, body := postEnroll(t, h.gw(), gateway.EnrollRequest{Token: tok, CSRPEM: csrPEM})
			if status != http.StatusUnauthorized {
				t.Fatalf("token %q: %d %s", tok, status, body)
			}
		}
	})
	t.Run("suspended tenant", func(t *testing.T) {
		tok := h.token(ctxB, "b")
		if _, err := h.env.Pool.Exec(context.Background(), `UPDATE platform.tenants SET status = 'suspended' WHERE id = $1`, string(tidB)); err != nil {
			t.Fatal(err)
		}
		status, body := postEnroll(t, h.gw(), gateway.EnrollRequest{Token: tok, CSRPEM: csrPEM})
		if status < 400 {
			t.Fatalf("suspended tenant's token: %d %s", status, body)
		}
	})
	t.Run("bad CSR keeps the token", func(t *testing.T) {
		tok := h.token(ctx, "careful")
		for _, bad := range []string{"", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", tamper(csrPEM)} {
			status, body := postEnroll(t, h.gw(), gateway.EnrollRequest{Token: tok, CSRPEM: bad})
			if status != http.StatusBadRequest {
				t.Fatalf("bad CSR: %d %s", status, body)
			}
		}
		h.enroll(h.gw(), tok) // still usable
	})
}

// tamper flips a byte inside the CSR's signed part, so its signature no longer verifies.
func tamper(csrPEM string) string {
	b := []byte(csrPEM)
	i := len("-----BEGIN CERTIFICATE REQUEST-----\n") + 40
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}

func TestCertificateRenewalOverTunnel(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1)
	tid, ctx := h.tenant("acme")
	e := h.enroll(h.gw(), h.token(ctx, "renewer"))
	ag := h.connect(h.gw(), e)

	// Ask for another tenant's name: the renewed certificate keeps the tunnel's.
	key, csrPEM := csr(t, "spiffe://streamspace/tenant/zzzzzzzzzzzz/agent/agt_bbbbbbbbbbbbbbbbbbbb")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := ag.conn.OpenStreamSync(sctx)
	if err != nil {
		t.Fatal(err)
	}
	w, r := wire.NewWriter(st), wire.NewReader(st, 0)
	if err := w.WritePreamble(wire.StreamCert); err != nil {
		t.Fatal(err)
	}
	if err := w.Write(&wire.CertRenewRequest{CSRPEM: csrPEM}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReadPreamble(); err != nil {
		t.Fatal(err)
	}
	m, err := r.Read()
	if err != nil {
		t.Fatal(err)
	}
	resp, ok := m.(*wire.CertRenewResponse)
	if !ok {
		t.Fatalf("got %#v", m)
	}
	renewed := withCert(t, gateway.EnrollResponse{AgentID: e.resp.AgentID, TenantID: tid, CertificatePEM: resp.CertificatePEM, CAPEM: e.resp.CAPEM}, key)
	id, err := gateway.IdentityOf(renewed.leaf)
	if err != nil || id.Tenant != tid || id.Agent != e.resp.AgentID {
		t.Fatalf("renewed certificate names %+v (%v)", id, err)
	}
	a, err := h.svc().Agent(ctx, e.resp.AgentID)
	if err != nil || a.CertSerial != fmt.Sprintf("%x", renewed.leaf.SerialNumber.Bytes()) {
		t.Fatalf("registry serial %q, want the renewed one (%v)", a.CertSerial, err)
	}
	// The new certificate opens a tunnel (which supersedes the old one).
	h.connect(h.gw(), renewed)
	if code, ok := ag.closed(3 * time.Second); !ok || code != wire.CloseSuperseded {
		t.Fatalf("old tunnel: closed=%v code=%v", ok, code)
	}
}
