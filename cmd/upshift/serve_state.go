package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/upshift-io/upshift"
	"github.com/upshift-io/upshift/internal/leader"
	"github.com/upshift-io/upshift/state/store"
)

// stateFlags are serve's flags that say where the state lives: the data dir's bbolt file (the default), or etcd,
// shared by several replicas of the engine.
type stateFlags struct {
	backend                   string
	endpoints                 []string
	caFile, certFile, keyFile string
	replica                   string
	leaseTTL                  time.Duration
}

func addStateFlags(cmd *cobra.Command) *stateFlags {
	f := &stateFlags{}

	cmd.Flags().StringVar(&f.backend, "state", "bbolt", "where the state lives: bbolt (DATA-DIR/"+upshift.StateFileName+
		", one engine) or etcd (shared by several replicas; one leads and runs the controllers)")
	cmd.Flags().StringSliceVar(&f.endpoints, "etcd-endpoints", nil, "with --state etcd: the etcd client URLs (comma-separated)")
	cmd.Flags().StringVar(&f.caFile, "etcd-ca", "", "with --state etcd: the CA certificate that signed the etcd servers' certificates")
	cmd.Flags().StringVar(&f.certFile, "etcd-cert", "", "with --state etcd: the client certificate presented to etcd")
	cmd.Flags().StringVar(&f.keyFile, "etcd-key", "", "with --state etcd: the key of --etcd-cert")
	cmd.Flags().StringVar(&f.replica, "replica-name", "", "with --state etcd: this replica's name in the election and in `upshift status` (default: HOSTNAME/LISTEN)")
	cmd.Flags().DurationVar(&f.leaseTTL, "etcd-lease-ttl", leader.DefaultLeaseTTL,
		"with --state etcd: how long a leader that stopped renewing its lease (killed, paused, cut off) keeps the leadership; whole seconds")

	return f
}

// engineOptions turns the flags into the engine's options and returns what to close after the engine.
func (f *stateFlags) engineOptions(listen string, logger *zap.Logger) ([]upshift.Option, func() error, error) {
	switch f.backend {
	case "bbolt":
		if len(f.endpoints) > 0 {
			return nil, nil, errors.New("--etcd-endpoints needs --state etcd")
		}

		return nil, func() error { return nil }, nil
	case "etcd":
	default:
		return nil, nil, fmt.Errorf("--state %q: want bbolt or etcd", f.backend)
	}

	if len(f.endpoints) == 0 {
		return nil, nil, errors.New("--state etcd needs --etcd-endpoints")
	}

	cfg := clientv3.Config{Endpoints: f.endpoints, DialTimeout: 5 * time.Second, Logger: logger.Named("etcd-client")}

	if f.caFile != "" || f.certFile != "" || f.keyFile != "" {
		tlsConfig, err := f.tls()
		if err != nil {
			return nil, nil, err
		}

		cfg.TLS = tlsConfig
	}

	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("connecting to etcd at %v: %w", f.endpoints, err)
	}

	replica := f.replica
	if replica == "" {
		host, _ := os.Hostname() //nolint:errcheck // an empty host still leaves the address to tell replicas apart
		replica = host + "/" + listen
	}

	return []upshift.Option{upshift.WithEtcd(cli, replica, f.leaseTTL)}, cli.Close, nil
}

// where says where the state lives, for the serving line.
func (f *stateFlags) where(dataDir string) string {
	if f.backend == "etcd" {
		return "etcd " + strings.Join(f.endpoints, ",") + " under " + store.DefaultEtcdPrefix
	}

	return filepath.Join(dataDir, upshift.StateFileName)
}

// tls is the client TLS of the etcd connection: the CA to verify the servers by and, when given, the client
// certificate.
func (f *stateFlags) tls() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}

	if f.caFile != "" {
		pem, err := os.ReadFile(f.caFile)
		if err != nil {
			return nil, fmt.Errorf("--etcd-ca: %w", err)
		}

		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--etcd-ca %s: no PEM certificate in it", f.caFile)
		}
	}

	if (f.certFile == "") != (f.keyFile == "") {
		return nil, errors.New("--etcd-cert and --etcd-key go together")
	}

	if f.certFile != "" {
		cert, err := tls.LoadX509KeyPair(f.certFile, f.keyFile)
		if err != nil {
			return nil, fmt.Errorf("--etcd-cert/--etcd-key: %w", err)
		}

		cfg.Certificates = []tls.Certificate{cert}
	}

	return cfg, nil
}
