package gateway

import (
	"crypto/tls"
	"log/slog"
	"net"
	"testing"
	"time"

	"streamspace.dev/libs/seal"
)

// testCA makes a CA in memory, as LoadCA would store it.
func testCA(t *testing.T) *CA {
	t.Helper()
	s, err := seal.New(make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	row, err := newCARow(s)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := openCA(row, s)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func testPeer(t *testing.T, ca *CA, id string) *peerIdentity {
	t.Helper()
	p := &peerIdentity{ca: ca, id: id, ttl: time.Hour}
	if err := p.renew(); err != nil {
		t.Fatal(err)
	}
	return p
}

// handshake runs a TLS handshake between client and server over a pipe and returns
// each side's error.
func handshake(client, server *tls.Config) (clientErr, serverErr error) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	done := make(chan error, 1)
	go func() {
		s := tls.Server(b, server)
		err := s.Handshake()
		if err == nil {
			// TLS 1.3: the server verifies the client's certificate after the client
			// considers the handshake done; a read delivers the verdict to the client.
			_, _ = s.Write([]byte{1})
		}
		done <- err
		b.Close()
	}()
	c := tls.Client(a, client)
	clientErr = c.Handshake()
	if clientErr == nil {
		_, clientErr = c.Read(make([]byte, 1))
	}
	a.Close()
	return clientErr, <-done
}

// The forwarder accepts only the owner's replica certificate: not another replica's, not
// the agents' server certificate of the same CA, not a replica-shaped one of another CA.
func TestForwarderVerifiesOwner(t *testing.T) {
	t.Parallel()
	ca := testCA(t)
	owner, forwarder := testPeer(t, ca, "gw-owner"), testPeer(t, ca, "gw-fwd")
	if cerr, serr := handshake(forwarder.clientTLS("gw-owner"), owner.serverTLS()); cerr != nil || serr != nil {
		t.Fatalf("replica to its owner: client %v, server %v", cerr, serr)
	}
	agentsServer, err := ca.IssueServer([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	impostor := testPeer(t, testCA(t), "gw-owner")
	for _, c := range []struct {
		name   string
		server *tls.Config
		want   string
	}{
		{"another replica", owner.serverTLS(), "wrong_replica"},
		{"the agents' server certificate", &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{agentsServer}}, "not_replica"},
		{"the owner's name from another CA", impostor.serverTLS(), "untrusted"},
	} {
		want := "gw-owner"
		if c.want == "wrong_replica" {
			want = "gw-elsewhere"
		}
		cerr, _ := handshake(forwarder.clientTLS(want), c.server)
		if got := peerRefusal(cerr); got != c.want {
			t.Errorf("%s: refusal %q (%v), want %q", c.name, got, cerr, c.want)
		}
	}
}

// A replica's certificate is renewed while it runs, well before it expires.
func TestPeerCertificateRenewed(t *testing.T) {
	t.Parallel()
	p := &peerIdentity{ca: testCA(t), id: "gw-0", ttl: 30 * time.Millisecond}
	if err := p.renew(); err != nil {
		t.Fatal(err)
	}
	first := p.cert.Load()
	ctx := t.Context()
	go p.run(ctx, slog.New(slog.DiscardHandler))
	deadline := time.Now().Add(10 * time.Second)
	for p.cert.Load() == first {
		if time.Now().After(deadline) {
			t.Fatal("the certificate was never renewed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if id, err := ReplicaOf(p.cert.Load().Leaf); err != nil || id != "gw-0" {
		t.Fatalf("renewed certificate names %q, %v", id, err)
	}
}
