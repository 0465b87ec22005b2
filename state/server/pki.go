package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"

	sideroX509 "github.com/siderolabs/crypto/x509"
)

// Names of the PKI files in the engine's data dir, each written 0600.
const (
	caCertFile     = "ca.crt"
	caKeyFile      = "ca.key"
	serverCertFile = "server.crt"
	serverKeyFile  = "server.key"
)

// ServerName is the name the server certificate is issued for and clients verify it by, whatever address they dial:
// the CA is the engine's own, so the name need not be the host's, and a server on any address (a non-loopback
// --listen, a port picked at start) keeps the same certificate.
const ServerName = "upshift"

// Lifetimes of what the PKI issues: the CA outlives many client certificates, and a client config is meant to be
// kept like a talosconfig.
const (
	caValidity     = 10 * 365 * 24 * time.Hour
	serverValidity = 10 * 365 * 24 * time.Hour
	clientValidity = 365 * 24 * time.Hour
)

// PKI is the engine's certificate authority and server certificate: the CA signs every client certificate, and
// a client is let in only with a certificate it signed (mTLS).
type PKI struct {
	ca     *sideroX509.CertificateAuthority
	server tls.Certificate
	pool   *x509.CertPool
}

// LoadOrCreatePKI reads the CA and the server certificate from dir, creating them (0600 files) on first use, so a
// restarted engine keeps its CA and every client config it issued stays valid.
func LoadOrCreatePKI(dir string) (*PKI, error) {
	ca, err := loadOrCreateCA(dir)
	if err != nil {
		return nil, err
	}

	server, err := loadOrCreateServerCert(dir, ca)
	if err != nil {
		return nil, err
	}

	pool := x509.NewCertPool()
	pool.AddCert(ca.Crt)

	return &PKI{ca: ca, server: server, pool: pool}, nil
}

// LoadPKI reads an existing PKI from dir without creating anything, for issuing client configs on the data dir of
// an engine that has served before.
func LoadPKI(dir string) (*PKI, error) {
	if _, err := os.Stat(filepath.Join(dir, caKeyFile)); err != nil {
		return nil, fmt.Errorf("no CA in %s (has `upshift serve` run on it?): %w", dir, err)
	}

	return LoadOrCreatePKI(dir)
}

func loadOrCreateCA(dir string) (*sideroX509.CertificateAuthority, error) {
	crt, key := filepath.Join(dir, caCertFile), filepath.Join(dir, caKeyFile)

	pair, err := readPair(crt, key)
	if err == nil {
		ca, err := sideroX509.NewCertificateAuthorityFromCertificateAndKey(pair)
		if err != nil {
			return nil, fmt.Errorf("reading the CA in %s: %w", dir, err)
		}

		return ca, nil
	}

	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}

	ca, err := sideroX509.NewSelfSignedCertificateAuthority(sideroX509.Organization("upshift"),
		sideroX509.NotAfter(time.Now().Add(caValidity)))
	if err != nil {
		return nil, fmt.Errorf("creating the CA: %w", err)
	}

	if err = writePair(crt, key, ca.CrtPEM, ca.KeyPEM); err != nil {
		return nil, err
	}

	return ca, nil
}

func loadOrCreateServerCert(dir string, ca *sideroX509.CertificateAuthority) (tls.Certificate, error) {
	crt, key := filepath.Join(dir, serverCertFile), filepath.Join(dir, serverKeyFile)

	pair, err := readPair(crt, key)
	if err == nil {
		cert, err := tls.X509KeyPair(pair.Crt, pair.Key)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("reading the server certificate in %s: %w", dir, err)
		}

		return cert, nil
	}

	if !errors.Is(err, fs.ErrNotExist) {
		return tls.Certificate{}, err
	}

	kp, err := sideroX509.NewKeyPair(ca,
		sideroX509.CommonName(ServerName),
		sideroX509.DNSNames([]string{ServerName, "localhost"}),
		sideroX509.IPAddresses([]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}),
		sideroX509.ExtKeyUsage([]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}),
		sideroX509.NotAfter(time.Now().Add(serverValidity)))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issuing the server certificate: %w", err)
	}

	if err = writePair(crt, key, kp.CrtPEM, kp.KeyPEM); err != nil {
		return tls.Certificate{}, err
	}

	return *kp.Certificate, nil
}

// readPair reads a PEM certificate and key; an error wrapping fs.ErrNotExist means neither file is there.
func readPair(crtPath, keyPath string) (*sideroX509.PEMEncodedCertificateAndKey, error) {
	crt, crtErr := os.ReadFile(crtPath)
	key, keyErr := os.ReadFile(keyPath)

	switch {
	case errors.Is(crtErr, fs.ErrNotExist) && errors.Is(keyErr, fs.ErrNotExist):
		return nil, crtErr
	case crtErr != nil:
		return nil, fmt.Errorf("reading %s: %w (remove %s too to create both again)", crtPath, crtErr, keyPath)
	case keyErr != nil:
		return nil, fmt.Errorf("reading %s: %w (remove %s too to create both again)", keyPath, keyErr, crtPath)
	}

	return &sideroX509.PEMEncodedCertificateAndKey{Crt: crt, Key: key}, nil
}

func writePair(crtPath, keyPath string, crt, key []byte) error {
	if err := writeSecretFile(keyPath, key); err != nil {
		return err
	}

	return writeSecretFile(crtPath, crt)
}

// writeSecretFile writes data to path readable by its owner only, complete or not at all: a crash leaves the old
// file or none, never half a key.
func writeSecretFile(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("creating the directory of %s: %w", path, err)
	}

	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}

	_, err = tmp.Write(data)
	err = errors.Join(err, tmp.Chmod(0o600), tmp.Sync(), tmp.Close())

	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}

	if err != nil {
		return errors.Join(fmt.Errorf("writing %s: %w", path, err), os.Remove(tmp.Name()))
	}

	return nil
}

// ServerTLS is the server side of mTLS: the server certificate, and only clients with a certificate the CA signed.
func (p *PKI) ServerTLS() *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{p.server},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    p.pool,
		MinVersion:   tls.VersionTLS13,
	}
}

// Issue signs a client certificate for name with role, and returns it as a client config of endpoint.
func (p *PKI) Issue(name string, role Role, endpoint string) (*ClientConfig, error) {
	if name == "" {
		return nil, errors.New("a client config needs a name (it is the writer the event log records)")
	}

	if !role.valid() {
		return nil, fmt.Errorf("unknown role %q (roles: %s)", role, rolesList())
	}

	kp, err := sideroX509.NewKeyPair(p.ca,
		sideroX509.CommonName(name),
		sideroX509.Organization(role.organization()),
		sideroX509.ExtKeyUsage([]x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}),
		sideroX509.NotAfter(time.Now().Add(clientValidity)))
	if err != nil {
		return nil, fmt.Errorf("issuing a client certificate for %s: %w", name, err)
	}

	return &ClientConfig{Endpoint: endpoint, CA: string(p.ca.CrtPEM), Crt: string(kp.CrtPEM), Key: string(kp.KeyPEM)}, nil
}

// Signed says whether cfg's certificate was signed by this CA, so an engine can tell its own config from a stale one.
func (p *PKI) Signed(cfg *ClientConfig) bool {
	cert, err := tls.X509KeyPair([]byte(cfg.Crt), []byte(cfg.Key))
	if err != nil {
		return false
	}

	_, err = cert.Leaf.Verify(x509.VerifyOptions{Roots: p.pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})

	return err == nil
}
