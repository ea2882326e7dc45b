package gateway_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	gateway "streamspace.dev/services/agent-gateway"
	"streamspace.dev/services/agent-gateway/gatewaytest"
)

// peerRefused reads agent_gateway_peer_refused_total{side, reason} off reg.
func peerRefused(t *testing.T, reg *prometheus.Registry, side, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "agent_gateway_peer_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["side"] == side && labels["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// peerGet sends GET path to the peer listener at addr presenting cert (none when nil),
// over TLS 1.3 as a replica does; it trusts the listener blindly, since what is tested
// is whom the listener lets in.
func peerGet(addr, path string, cert *tls.Certificate) (string, error) {
	conf := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}
	if cert != nil {
		// Presented whatever CAs the listener names: Go's client would otherwise send
		// none for another CA's certificate.
		conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: conf, DisableKeepAlives: true}}
	resp, err := client.Get("https://" + addr + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// TestPeerListener: a replica's peer listener serves only clients holding a replica
// certificate of the gateway's CA. Without a certificate, with an agent's certificate of
// the same CA, or with a replica-shaped certificate of another CA, the TLS handshake
// fails and no request reaches the handler; each refusal is counted. Once the replica
// closes, its peer listener accepts nothing.
func TestPeerListener(t *testing.T) {
	h := newHarness(t, 0)
	reg := prometheus.NewRegistry()
	cfg := h.cfg
	cfg.GatewayID = "gw-owner"
	gw, err := gateway.StartGateway(context.Background(), cfg, gateway.GatewayOptions{Store: h.store, Enroller: h.enroller,
		ConnConfig: h.env.DB.Pool().Config().ConnConfig, Logger: testLogger(), Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = gw.Close(context.Background())
		}
	})
	if want := "https://" + gw.PeerAddr(); gw.AdvertiseURL() != want {
		t.Fatalf("advertises %q, want its loopback peer listener %q", gw.AdvertiseURL(), want)
	}
	var reached atomic.Int32
	gw.ServePeers(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		id, err := gateway.ReplicaOf(r.TLS.PeerCertificates[0])
		if err != nil {
			t.Errorf("the handler got a client that is no replica: %v", err)
		}
		_, _ = io.WriteString(w, id)
	}))

	replica, err := gw.CA().IssueReplica("gw-other", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := peerGet(gw.PeerAddr(), "/x", &replica); err != nil || got != "gw-other" {
		t.Fatalf("a replica's request: %q, %v", got, err)
	}

	_, ctx := h.tenant("acme")
	agent := h.enroll(gw, h.token(ctx, "cluster-1"))
	for _, c := range []struct {
		name   string
		cert   *tls.Certificate
		reason string
	}{
		{"no certificate", nil, "handshake"},
		{"an agent's certificate of the same CA", &agent.cert, "not_replica"},
		{"a replica certificate of another CA", new(gatewaytest.ImpostorReplica(t, "gw-other")), "untrusted"},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := peerRefused(t, reg, "server", c.reason)
			_, err := peerGet(gw.PeerAddr(), "/x", c.cert)
			if oe := new(net.OpError); !errors.As(err, &oe) || oe.Op != "remote error" {
				t.Fatalf("got %v, want the listener's TLS alert", err)
			}
			// The client reads the alert before the listener has counted it.
			eventually(t, 10*time.Second, func() error {
				if got := peerRefused(t, reg, "server", c.reason); got != before+1 {
					return fmt.Errorf("refusals (server, %s) = %v, want %v", c.reason, got, before+1)
				}
				return nil
			})
		})
	}
	if n := reached.Load(); n != 1 {
		t.Fatalf("the handler served %d requests, want only the replica's", n)
	}

	closed = true
	if err := gw.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := peerGet(gw.PeerAddr(), "/x", &replica); err == nil {
		t.Fatal("the peer listener serves after Close")
	}
}

// TestReplicaOf: only IssueReplica's certificates name a replica; an agent's and the
// agents' server certificate, from the same CA, do not.
func TestReplicaOf(t *testing.T) {
	h := newHarness(t, 1)
	ca := h.gw().CA()
	replica, err := ca.IssueReplica("gw-7", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := gateway.ReplicaOf(replica.Leaf); err != nil || id != "gw-7" {
		t.Fatalf("ReplicaOf(replica) = %q, %v", id, err)
	}
	if _, err := ca.IssueReplica("", time.Hour); err == nil {
		t.Error("IssueReplica issued a certificate without an id")
	}
	server, err := ca.IssueServer([]string{"localhost", "127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	_, ctx := h.tenant("acme")
	// An agent asking for a replica's name gets its own (IssueAgent ignores the CSR's).
	agent := h.enroll(h.gw(), h.token(ctx, "cluster-1"), gateway.ReplicaURI("gw-7").String())
	for name, c := range map[string]*x509.Certificate{"server": server.Leaf, "agent": agent.leaf} {
		if id, err := gateway.ReplicaOf(c); err == nil {
			t.Errorf("ReplicaOf(%s certificate) = %q, want an error", name, id)
		}
	}
	if strings.HasPrefix(gateway.ReplicaURI("x").Path, "/tenant/") {
		t.Error("a replica URI could be taken for an agent's")
	}
	if _, err := gateway.IdentityOf(replica.Leaf); err == nil {
		t.Error("a replica certificate passes for an agent's")
	}
}
