package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"go.yaml.in/yaml/v4"
)

// ClientConfig is what a client needs to reach an upshift server, like a talosconfig: where the server is, the CA
// that signed its certificate, and the client's own certificate and key, which carry its name and role.
type ClientConfig struct {
	// Endpoint is the server's address (host:port).
	Endpoint string `yaml:"endpoint"`
	// CA is the PEM certificate of the engine's CA: the server must present a certificate it signed.
	CA string `yaml:"ca"`
	// Crt is the client's PEM certificate: CN is its name, Organization its role.
	Crt string `yaml:"crt"`
	// Key is the client's PEM private key.
	Key string `yaml:"key"`
}

// LoadClientConfig reads a client config from path, and checks that it holds a usable certificate and key.
func LoadClientConfig(path string) (*ClientConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the client config: %w", err)
	}

	cfg, err := ParseClientConfig(data)
	if err != nil {
		return nil, fmt.Errorf("client config %s: %w", path, err)
	}

	return cfg, nil
}

// ParseClientConfig decodes a client config and checks it, so a damaged file is named at load, not as a TLS
// failure at the first call.
func ParseClientConfig(data []byte) (*ClientConfig, error) {
	var cfg ClientConfig
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("not a client config: %w", err)
	}

	if _, err := cfg.TLS(); err != nil {
		return nil, err
	}

	return &cfg, nil
}

// Write saves the config to path, readable by its owner only (it holds a private key).
func (c *ClientConfig) Write(path string) error {
	data, err := yaml.Marshal(c)
	if err != nil {
		return fmt.Errorf("encoding the client config: %w", err)
	}

	return writeSecretFile(path, data)
}

// Identity returns the name and role the config's certificate carries.
func (c *ClientConfig) Identity() (string, Role, error) {
	cert, err := tls.X509KeyPair([]byte(c.Crt), []byte(c.Key))
	if err != nil {
		return "", "", fmt.Errorf("client certificate: %w", err)
	}

	return identityOf(cert.Leaf)
}

// TLS is the client side of mTLS: present the config's certificate, and trust only a server certificate the
// config's CA signed for ServerName.
func (c *ClientConfig) TLS() (*tls.Config, error) {
	if c.CA == "" || c.Crt == "" || c.Key == "" {
		return nil, errors.New("ca, crt and key are all required")
	}

	cert, err := tls.X509KeyPair([]byte(c.Crt), []byte(c.Key))
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}

	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(c.CA)) {
		return nil, errors.New("ca: no PEM certificate")
	}

	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   ServerName,
		MinVersion:   tls.VersionTLS13,
	}, nil
}
