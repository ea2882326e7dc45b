package gateway

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/seal"
	"streamspace.dev/libs/tenant"
)

// caLifetime is long because rotating the CA means re-trusting it on every agent; agent
// certificates, which are cheap to renew over the tunnel, are the short-lived ones.
const caLifetime = 10 * 365 * 24 * time.Hour

// CA is the internal certificate authority of agents. Its key is ECDSA P-256: every TLS
// stack and every agent platform verifies it, unlike Ed25519 in some older ones.
type CA struct {
	id      string
	cert    *x509.Certificate
	certPEM string
	key     crypto.Signer
	pool    *x509.CertPool
}

// LoadCA returns the stored CA, creating it first when there is none. Replicas starting
// at once race benignly: the store keeps the first and every replica uses that one.
func LoadCA(ctx context.Context, store Store, kek []byte) (*CA, error) {
	s, err := seal.New(kek)
	if err != nil {
		return nil, err
	}
	row, err := store.CA(ctx)
	if apperr.IsCode(err, apperr.NotFound) {
		fresh, ferr := newCARow(s)
		if ferr != nil {
			return nil, ferr
		}
		row, err = store.CreateCA(ctx, fresh)
	}
	if err != nil {
		return nil, fmt.Errorf("loading the agent CA: %w", err)
	}
	return openCA(row, s)
}

func newCARow(s *seal.Sealer) (StoredCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return StoredCA{}, err
	}
	idb := make([]byte, 12)
	_, _ = rand.Read(idb)
	id := base64.RawURLEncoding.EncodeToString(idb)
	now := time.Now().Truncate(time.Second)
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{Organization: []string{"StreamSpace"}, CommonName: "StreamSpace agent CA " + id},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return StoredCA{}, err
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return StoredCA{}, err
	}
	sealed, err := s.Seal(pkcs8, []byte(id))
	if err != nil {
		return StoredCA{}, err
	}
	return StoredCA{ID: id, CertPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		SealedKey: sealed, NotAfter: tmpl.NotAfter, CreatedAt: now}, nil
}

func openCA(row StoredCA, s *seal.Sealer) (*CA, error) {
	block, _ := pem.Decode([]byte(row.CertPEM))
	if block == nil {
		return nil, errors.New("stored CA certificate is not PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing the stored CA certificate: %w", err)
	}
	plain, err := s.Open(row.SealedKey, []byte(row.ID))
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(plain)
	if err != nil {
		return nil, fmt.Errorf("parsing the CA key: %w", err)
	}
	key, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("the CA key cannot sign")
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &CA{id: row.ID, cert: cert, certPEM: row.CertPEM, key: key, pool: pool}, nil
}

// PEM returns the CA certificate, which agents trust for the gateway's server certificate.
func (ca *CA) PEM() string { return ca.certPEM }

// Pool returns a pool holding the CA, for verifying agents' client certificates.
func (ca *CA) Pool() *x509.CertPool { return ca.pool }

func randomSerial() *big.Int {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[0] &= 0x7f // positive, as RFC 5280 requires
	return new(big.Int).SetBytes(b)
}

// AgentURI is the URI SAN naming an agent: the only name the gateway trusts in an agent
// certificate.
func AgentURI(t tenant.ID, a AgentID) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: "streamspace", Path: "/tenant/" + string(t) + "/agent/" + string(a)}
}

var (
	agentIDPattern  = regexp.MustCompile(`^agt_[a-z2-7]{20}$`)
	agentURIPattern = regexp.MustCompile(`^/tenant/([a-z2-7]{12})/agent/(agt_[a-z2-7]{20})$`)
)

// NewAgentID mints a random agent id (100 bits).
func NewAgentID() AgentID {
	const alphabet = "abcdefghijklmnopqrstuvwxyz234567"
	var b [20]byte
	_, _ = rand.Read(b[:])
	for i := range b {
		b[i] = alphabet[b[i]&31]
	}
	return AgentID("agt_" + string(b[:]))
}

// ParseAgentID validates s as an agent id.
func ParseAgentID(s string) (AgentID, error) {
	if !agentIDPattern.MatchString(s) {
		return "", apperr.New(apperr.NotFound, "no such agent")
	}
	return AgentID(s), nil
}

// Identity is who a verified client certificate names.
type Identity struct {
	Tenant tenant.ID
	Agent  AgentID
}

// IdentityOf reads the tenant and agent from a certificate the CA signed: exactly one
// URI SAN of the form AgentURI. The subject and any other names are ignored.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	var found []Identity
	for _, u := range cert.URIs {
		if u.Scheme != "spiffe" || u.Host != "streamspace" || u.User != nil || u.Opaque != "" || u.RawPath != "" ||
			u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
			continue
		}
		m := agentURIPattern.FindStringSubmatch(u.Path)
		if m == nil {
			continue
		}
		found = append(found, Identity{Tenant: tenant.ID(m[1]), Agent: AgentID(m[2])})
	}
	if len(found) != 1 {
		return Identity{}, errors.New("the certificate does not name exactly one agent")
	}
	return found[0], nil
}

// maxCSR bounds the PEM we parse: a CSR is well under a kilobyte.
const maxCSR = 16 << 10

// ParseCSR decodes a PEM PKCS #10 request and checks its self-signature, which proves the
// requester holds the private key. Only its public key is used: every name in it is
// ignored. Invalid: not a CSR, bad signature, or a weak or unknown key type.
func ParseCSR(pemText string) (*x509.CertificateRequest, error) {
	if len(pemText) > maxCSR {
		return nil, apperr.Validation("invalid CSR", apperr.Field("csr_pem", "is too long"))
	}
	block, _ := pem.Decode([]byte(pemText))
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, apperr.Validation("invalid CSR", apperr.Field("csr_pem", "must be a PEM CERTIFICATE REQUEST"))
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, apperr.Wrap(err, apperr.Invalid, "invalid CSR: cannot parse it")
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, apperr.Wrap(err, apperr.Invalid, "invalid CSR: its signature does not verify")
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, apperr.New(apperr.Invalid, "invalid CSR: ECDSA keys must use P-256 or P-384")
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, apperr.New(apperr.Invalid, "invalid CSR: RSA keys must have at least 2048 bits")
		}
	default:
		return nil, apperr.New(apperr.Invalid, "invalid CSR: unsupported key type")
	}
	return csr, nil
}

// IssueAgent signs a client certificate for the CSR's key naming id, valid for ttl. The
// names come from id alone.
func (ca *CA) IssueAgent(csr *x509.CertificateRequest, id Identity, ttl time.Duration) (certPEM string, serial string, notAfter time.Time, err error) {
	now := time.Now().Truncate(time.Second)
	notAfter = now.Add(ttl)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	sn := randomSerial()
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{Organization: []string{"tenant " + string(id.Tenant)}, CommonName: string(id.Agent)},
		URIs:         []*url.URL{AgentURI(id.Tenant, id.Agent)},
		// Clock skew on customer clusters is common; an hour of backdating is harmless.
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, csr.PublicKey, ca.key)
	if err != nil {
		return "", "", time.Time{}, fmt.Errorf("signing the agent certificate: %w", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), hex.EncodeToString(sn.Bytes()), notAfter, nil
}

// IssueServer makes a fresh key and a server certificate for names (DNS names or IP
// addresses). Each replica makes its own at start; the key never leaves memory.
func (ca *CA) IssueServer(names []string, ttl time.Duration) (tls.Certificate, error) {
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{Organization: []string{"StreamSpace"}, CommonName: "agent-gateway"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		n = strings.TrimSpace(n)
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if n != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	return ca.issueKeyed(tmpl, ttl)
}

// ReplicaURI is the URI SAN naming gateway replica id in its peer certificate (IssueReplica).
// Its path begins with /gateway/, which no agent certificate's can (AgentURI: /tenant/…),
// so an agent's certificate, from the same CA, never passes for a replica's.
func ReplicaURI(id string) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: "streamspace", Path: replicaURIPrefix + id}
}

const replicaURIPrefix = "/gateway/"

// IssueReplica makes a fresh key and the peer certificate of gateway replica id, valid
// for ttl: the one name in it is ReplicaURI(id), and it serves both ends of a forwarded
// stream (server and client authentication). The key never leaves memory.
func (ca *CA) IssueReplica(id string, ttl time.Duration) (tls.Certificate, error) {
	if id == "" {
		return tls.Certificate{}, errors.New("a replica certificate needs the replica's id")
	}
	return ca.issueKeyed(&x509.Certificate{
		Subject:     pkix.Name{Organization: []string{"StreamSpace"}, CommonName: "agent-gateway replica"},
		URIs:        []*url.URL{ReplicaURI(id)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}, ttl)
}

// errNotReplica refuses a certificate, signed by the CA, that is not a replica's.
var errNotReplica = errors.New("the certificate does not name a gateway replica")

// ReplicaOf returns the id of the gateway replica that cert, already verified against
// the CA, names: its only URI SAN is a ReplicaURI and it is good for both server and
// client authentication, as IssueReplica makes it. An agent's certificate (an AgentURI,
// client authentication only) and the agents' server certificate (no URI) fail.
func ReplicaOf(cert *x509.Certificate) (string, error) {
	if len(cert.URIs) != 1 || !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth) ||
		!slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return "", errNotReplica
	}
	u := cert.URIs[0]
	if u.Scheme != "spiffe" || u.Host != "streamspace" || u.User != nil || u.Opaque != "" || u.RawQuery != "" ||
		u.ForceQuery || u.Fragment != "" {
		return "", errNotReplica
	}
	id, ok := strings.CutPrefix(u.Path, replicaURIPrefix)
	if !ok || id == "" {
		return "", errNotReplica
	}
	return id, nil
}

// issueKeyed makes a fresh ECDSA P-256 key and signs tmpl's names and usages for it,
// valid from an hour ago (clock skew) for ttl but never beyond the CA.
func (ca *CA) issueKeyed(tmpl *x509.Certificate, ttl time.Duration) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now().Truncate(time.Second)
	tmpl.SerialNumber = randomSerial()
	tmpl.NotBefore = now.Add(-time.Hour)
	tmpl.NotAfter = now.Add(ttl)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	if tmpl.NotAfter.After(ca.cert.NotAfter) {
		tmpl.NotAfter = ca.cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der, ca.cert.Raw}, PrivateKey: key, Leaf: leaf}, nil
}
