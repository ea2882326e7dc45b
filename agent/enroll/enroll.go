// Package enroll gives the agent its identity: a private key generated here, which never
// leaves the agent, and a client certificate signed by the gateway, which names the
// agent's tenant and id (the gateway takes those names from the enrollment token, never
// from the CSR).
//
// On first start the agent exchanges a one-time enrollment token and a CSR for a
// certificate over HTTPS (Client); from then on it reuses what Store saved in the state
// directory, or a certificate and key mounted from a Kubernetes Secret (LoadFiles), and
// renews the certificate over the tunnel before it expires (Holder.Renew). Every write is
// atomic, so a crash never leaves a key without its certificate.
package enroll

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"streamspace.dev/libs/tenant"
	"streamspace.dev/libs/wire"
)

// Credential is the agent's key and certificate chain and the identity its certificate
// names.
type Credential struct {
	// Cert is ready for tls.Config: chain (leaf first), private key, and Leaf parsed.
	Cert   tls.Certificate
	Agent  wire.AgentID
	Tenant tenant.ID
}

// Leaf returns the leaf certificate.
func (c *Credential) Leaf() *x509.Certificate { return c.Cert.Leaf }

// RenewAt is when renewal should start: once two thirds of the lifetime have passed
// (day 20 of a 30-day certificate), which leaves ten days of retries against a gateway
// that is down or an agent that is offline before the tunnel would be refused.
func (c *Credential) RenewAt() time.Time {
	l := c.Leaf()
	return l.NotBefore.Add(l.NotAfter.Sub(l.NotBefore) * 2 / 3)
}

// The gateway names an agent in one URI SAN, spiffe://streamspace/tenant/<t>/agent/<a>
// (services/agent-gateway, AgentURI); the subject is decoration.
var agentURI = regexp.MustCompile(`^/tenant/([^/]+)/agent/([^/]+)$`)

// IdentityOf reads the tenant and agent id from a certificate's URI SAN. The agent only
// uses them for Hello and logs (the gateway trusts the certificate, not Hello), so the
// check is lenient about the ids' syntax: that is the gateway's to enforce.
func IdentityOf(leaf *x509.Certificate) (tenant.ID, wire.AgentID, error) {
	for _, u := range leaf.URIs {
		if u.Scheme != "spiffe" || u.Host != "streamspace" {
			continue
		}
		if m := agentURI.FindStringSubmatch(u.Path); m != nil {
			return tenant.ID(m[1]), wire.AgentID(m[2]), nil
		}
	}
	return "", "", errors.New("the certificate names no StreamSpace agent (no spiffe://streamspace/tenant/…/agent/… URI SAN)")
}

// NewKey generates the agent's private key. ECDSA P-256 rather than Ed25519: every TLS
// stack and HSM a customer might put in front of us handles it.
func NewKey() (crypto.Signer, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// NewCSR returns a PEM PKCS #10 request for key. name only makes the CSR readable in
// logs; the gateway ignores every name in it.
func NewCSR(key crypto.Signer, name string) (string, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: name},
	}, key)
	if err != nil {
		return "", fmt.Errorf("creating CSR: %w", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), nil
}

// Assemble pairs key with a PEM certificate chain (leaf first) and checks that they
// belong together and that the leaf names an agent. It catches a gateway answering with
// someone else's certificate before anything is saved.
func Assemble(key crypto.Signer, chainPEM string) (*Credential, error) {
	var chain [][]byte
	rest := []byte(chainPEM)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			chain = append(chain, b.Bytes)
		}
	}
	if len(chain) == 0 {
		return nil, errors.New("no certificate in the PEM chain")
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, fmt.Errorf("parsing the certificate: %w", err)
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if pub, ok := key.Public().(equaler); !ok || !pub.Equal(leaf.PublicKey) {
		return nil, errors.New("the certificate is not for this agent's key")
	}
	t, a, err := IdentityOf(leaf)
	if err != nil {
		return nil, err
	}
	return &Credential{Cert: tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, Agent: a, Tenant: t}, nil
}

// parsePair builds a Credential from PEM key and certificate bytes.
func parsePair(certPEM, keyPEM []byte) (*Credential, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, errors.New("the private key cannot sign")
	}
	var chain []byte
	for _, der := range pair.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	return Assemble(signer, string(chain))
}

// LoadFiles reads a certificate chain and key from two PEM files, as a Kubernetes Secret
// of type kubernetes.io/tls mounts them (tls.crt, tls.key).
func LoadFiles(certFile, keyFile string) (*Credential, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("reading certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("reading key: %w", err)
	}
	c, err := parsePair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("loading %s and %s: %w", certFile, keyFile, err)
	}
	return c, nil
}

// Store keeps the agent's credential in its state directory: one file, agent.pem, holding
// the private key and the certificate chain, mode 0600. One file rather than two so that
// a renewal, which rotates the key too, replaces both in a single rename.
type Store struct {
	Dir string
}

// The files in the state directory.
const (
	credentialFile = "agent.pem"
	caFile         = "ca.pem"
)

// Load returns the saved credential; an error satisfying errors.Is(err, fs.ErrNotExist)
// means the agent has not enrolled yet.
func (s Store) Load() (*Credential, error) {
	b, err := os.ReadFile(filepath.Join(s.Dir, credentialFile))
	if err != nil {
		return nil, err
	}
	c, err := parsePair(b, b)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", filepath.Join(s.Dir, credentialFile), err)
	}
	return c, nil
}

// Save writes c atomically with mode 0600.
func (s Store) Save(c *Credential) error {
	der, err := x509.MarshalPKCS8PrivateKey(c.Cert.PrivateKey)
	if err != nil {
		return fmt.Errorf("encoding key: %w", err)
	}
	out := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	for _, cert := range c.Cert.Certificate {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert})...)
	}
	return writeAtomic(s.Dir, credentialFile, out)
}

// LoadCA returns the saved CA bundle that the gateway's tunnel certificate chains to, or
// nil if none was saved.
func (s Store) LoadCA() ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(s.Dir, caFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

// SaveCA writes the gateway's CA bundle atomically.
func (s Store) SaveCA(pemBytes []byte) error { return writeAtomic(s.Dir, caFile, pemBytes) }

// writeAtomic replaces dir/name with data: a temporary file in the same directory, mode
// 0600 before any byte is written, synced, renamed over the target, and the directory
// synced, so that after a crash the file is either the old one or the new one, whole.
func writeAtomic(dir, name string, data []byte) (err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating state directory: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+name+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if err = f.Chmod(0o600); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if err = os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync() // best effort: some filesystems refuse to sync directories
		_ = d.Close()
	}
	return nil
}
