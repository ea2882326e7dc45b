package kube

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki holds the paths and PEM contents of the cluster's certificates and keys.
type pki struct {
	caCert, caKey         string // files
	serverCert, serverKey string
	adminCert, adminKey   string
	saKey, saPub          string

	caPEM, adminCertPEM, adminKeyPEM []byte
}

// genPKI writes a fresh PKI into dir: a CA, the apiserver's serving cert, an
// admin client cert (O=system:masters) and the service-account RSA key pair.
// The certificates use ECDSA P-256 (fast to generate); the service-account key
// is RSA as the recipe asks.
func genPKI(dir string) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &pki{
		caCert: filepath.Join(dir, "ca.crt"), caKey: filepath.Join(dir, "ca.key"),
		serverCert: filepath.Join(dir, "apiserver.crt"), serverKey: filepath.Join(dir, "apiserver.key"),
		adminCert: filepath.Join(dir, "admin.crt"), adminKey: filepath.Join(dir, "admin.key"),
		saKey: filepath.Join(dir, "sa.key"), saPub: filepath.Join(dir, "sa.pub"),
	}
	now := time.Now().Add(-time.Hour)
	notAfter := now.Add(10 * 365 * 24 * time.Hour)

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "streamspace-e2e-ca"},
		NotBefore:             now,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("ca cert: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	p.caPEM = pemBytes("CERTIFICATE", caDER)
	if err := writePEM(p.caCert, p.caPEM); err != nil {
		return nil, err
	}
	if err := writeKey(p.caKey, caKey); err != nil {
		return nil, err
	}

	// apiserver serving cert. 10.96.0.1 is the "kubernetes" Service ClusterIP
	// of --service-cluster-ip-range 10.96.0.0/16.
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{
			"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local",
		},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.IPv4(10, 96, 0, 1)},
	}, ca, srvKey.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("apiserver cert: %w", err)
	}
	if err := writePEM(p.serverCert, pemBytes("CERTIFICATE", srvDER)); err != nil {
		return nil, err
	}
	if err := writeKey(p.serverKey, srvKey); err != nil {
		return nil, err
	}

	// Admin client cert: system:masters bypasses authorization. The
	// controller-manager, scheduler and kwok use it too.
	admKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	admDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "streamspace-admin", Organization: []string{"system:masters"}},
		NotBefore:    now,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca, admKey.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("admin cert: %w", err)
	}
	p.adminCertPEM = pemBytes("CERTIFICATE", admDER)
	if err := writePEM(p.adminCert, p.adminCertPEM); err != nil {
		return nil, err
	}
	if p.adminKeyPEM, err = keyPEM(admKey); err != nil {
		return nil, err
	}
	if err := writePEM(p.adminKey, p.adminKeyPEM); err != nil {
		return nil, err
	}

	// Service-account token signing key pair.
	sa, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	if err := writeKey(p.saKey, sa); err != nil {
		return nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		return nil, err
	}
	if err := writePEM(p.saPub, pemBytes("PUBLIC KEY", pubDER)); err != nil {
		return nil, err
	}
	return p, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return n
}

func pemBytes(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func keyPEM(k crypto.Signer) ([]byte, error) {
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return nil, err
		}
		return pemBytes("EC PRIVATE KEY", der), nil
	case *rsa.PrivateKey:
		return pemBytes("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k)), nil
	default:
		return nil, fmt.Errorf("unsupported key type %T", k)
	}
}

func writeKey(path string, k crypto.Signer) error {
	b, err := keyPEM(k)
	if err != nil {
		return err
	}
	return writePEM(path, b)
}

func writePEM(path string, b []byte) error {
	return os.WriteFile(path, b, 0o600)
}
