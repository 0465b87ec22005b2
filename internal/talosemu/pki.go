package talosemu

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"time"

	cryptox509 "github.com/siderolabs/crypto/x509"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/siderolabs/talos/pkg/machinery/role"
)

// pki is the fleet's Talos API PKI: a CA, the endpoint's server certificate and an admin client certificate, so the
// endpoint speaks mutual TLS exactly like apid and a talosconfig works unchanged.
type pki struct {
	caPEM     []byte
	caPool    *x509.CertPool
	server    tls.Certificate
	clientCrt []byte
	clientKey []byte
}

// certValidity covers any test run or demo; the emulator never rotates certificates.
const certValidity = 10 * 365 * 24 * time.Hour

func newPKI() (*pki, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating CA key: %w", err)
	}

	caTemplate := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"talos"}, CommonName: "upshift emulator CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}

	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("signing CA certificate: %w", err)
	}

	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("parsing CA certificate: %w", err)
	}

	p := &pki{caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), caPool: x509.NewCertPool()}
	p.caPool.AddCert(ca)

	serverCrt, serverKey, err := issue(ca, caKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "apid"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("issuing server certificate: %w", err)
	}

	if p.server, err = tls.X509KeyPair(serverCrt, serverKey); err != nil {
		return nil, fmt.Errorf("loading server certificate: %w", err)
	}

	// Talos carries the client's roles in the certificate's organizations.
	p.clientCrt, p.clientKey, err = issue(ca, caKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "admin", Organization: []string{string(role.Admin)}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("issuing client certificate: %w", err)
	}

	return p, nil
}

func issue(ca *x509.Certificate, caKey *ecdsa.PrivateKey, template *x509.Certificate) (crtPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}

	template.SerialNumber = serial()
	template.NotBefore = time.Now().Add(-time.Hour)
	template.NotAfter = time.Now().Add(certValidity)
	template.KeyUsage = x509.KeyUsageDigitalSignature

	der, err := x509.CreateCertificate(rand.Reader, template, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, err
	}

	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}

	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		// crypto/rand never fails on Linux; a constant serial would still produce valid certificates.
		return big.NewInt(1)
	}

	return n
}

// serverTLS requires and verifies client certificates from the fleet CA, like apid.
func (p *pki) serverTLS() *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{p.server},
		ClientCAs:    p.caPool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}
}

// clientTLS is what a machinery client needs to talk to the fleet: the CA and the admin client certificate.
func (p *pki) clientTLS() (*tls.Config, error) {
	crt, err := tls.X509KeyPair(p.clientCrt, p.clientKey)
	if err != nil {
		return nil, fmt.Errorf("loading client certificate: %w", err)
	}

	return &tls.Config{RootCAs: p.caPool, Certificates: []tls.Certificate{crt}, MinVersion: tls.VersionTLS13}, nil
}

// talosconfig builds a client configuration for the fleet endpoint; nodes lists every node so `talosctl -n` has a
// sensible default.
func (p *pki) talosconfig(contextName, endpoint string, nodes []string) *clientconfig.Config {
	cfg := clientconfig.NewConfig(contextName, []string{endpoint}, p.caPEM, &cryptox509.PEMEncodedCertificateAndKey{Crt: p.clientCrt, Key: p.clientKey})
	cfg.Contexts[contextName].Nodes = nodes

	return cfg
}
