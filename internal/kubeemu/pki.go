package kubeemu

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
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

// certValidity is long enough for any test run or emulator session, short enough to be obviously a test PKI.
const certValidity = 7 * 24 * time.Hour

// keyPair is a certificate with its private key, both PEM encoded, as kube-apiserver flags and kubeconfigs want them.
type keyPair struct {
	cert *x509.Certificate
	key  crypto.Signer

	CertPEM []byte
	KeyPEM  []byte
}

// pki is everything a control plane needs to serve TLS, authenticate its clients and sign service account tokens.
// It is generated in Go (no openssl) so a fresh machine needs nothing installed.
type pki struct {
	CA    *keyPair
	Admin *keyPair // client certificate in group system:masters
	Files pkiFiles
}

// pkiFiles are the paths the PKI was written to, used as kube-apiserver flags.
type pkiFiles struct {
	CACert, ServerCert, ServerKey, SAKey, SAPub string
}

// newPKI generates a fresh CA, the serving and admin certificates it signs, and a service account key pair,
// and writes the files kube-apiserver reads into dir.
func newPKI(dir string) (*pki, error) {
	ca, err := newKeyPair(&x509.Certificate{
		Subject:               pkix.Name{CommonName: "upshift-kubeemu-ca"},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}, nil)
	if err != nil {
		return nil, fmt.Errorf("generating the CA: %w", err)
	}

	server, err := newKeyPair(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca)
	if err != nil {
		return nil, fmt.Errorf("generating the apiserver serving certificate: %w", err)
	}

	admin, err := newKeyPair(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "admin", Organization: []string{"system:masters"}},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca)
	if err != nil {
		return nil, fmt.Errorf("generating the admin client certificate: %w", err)
	}

	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating the service account key: %w", err)
	}

	saKeyPEM, err := encodeKey(saKey)
	if err != nil {
		return nil, fmt.Errorf("encoding the service account key: %w", err)
	}

	saPubDER, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return nil, fmt.Errorf("encoding the service account public key: %w", err)
	}

	p := &pki{
		CA:    ca,
		Admin: admin,
		Files: pkiFiles{
			CACert:     filepath.Join(dir, "ca.crt"),
			ServerCert: filepath.Join(dir, "apiserver.crt"),
			ServerKey:  filepath.Join(dir, "apiserver.key"),
			SAKey:      filepath.Join(dir, "sa.key"),
			SAPub:      filepath.Join(dir, "sa.pub"),
		},
	}

	for path, data := range map[string][]byte{
		p.Files.CACert:     ca.CertPEM,
		p.Files.ServerCert: server.CertPEM,
		p.Files.ServerKey:  server.KeyPEM,
		p.Files.SAKey:      saKeyPEM,
		p.Files.SAPub:      pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPubDER}),
	} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, fmt.Errorf("writing %s: %w", path, err)
		}
	}

	return p, nil
}

// newKeyPair creates a P-256 key and a certificate from template, signed by parent (self-signed when parent is nil).
func newKeyPair(template *x509.Certificate, parent *keyPair) (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}

	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}

	now := time.Now()
	template.SerialNumber = serial
	template.NotBefore = now.Add(-time.Minute)
	template.NotAfter = now.Add(certValidity)

	signerCert, signerKey := template, crypto.Signer(key)
	if parent != nil {
		signerCert, signerKey = parent.cert, parent.key
	}

	der, err := x509.CreateCertificate(rand.Reader, template, signerCert, key.Public(), signerKey)
	if err != nil {
		return nil, err
	}

	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}

	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}

	return &keyPair{
		cert:    cert,
		key:     key,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  keyPEM,
	}, nil
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}

	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}
