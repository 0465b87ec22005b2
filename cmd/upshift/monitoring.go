package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Log formats of `serve --log-format`.
const (
	logFormatConsole = "console"
	logFormatJSON    = "json"
)

// newLogger builds serve's logger: level is a zap level name (debug, info, warn, error), format console (for
// people) or json (one object a line, for a log store). Neither samples nor adds stack traces: every transition
// line is kept, and a failed upgrade is a warning, not a program error.
func newLogger(level, format string) (*zap.Logger, error) {
	lvl, err := zap.ParseAtomicLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level %q: %w (debug, info, warn or error)", level, err)
	}

	var cfg zap.Config

	switch format {
	case logFormatConsole:
		cfg = zap.NewDevelopmentConfig()
	case logFormatJSON:
		cfg = zap.NewProductionConfig()
		cfg.Sampling = nil
		cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	default:
		return nil, fmt.Errorf("--log-format %q: want %s or %s", format, logFormatConsole, logFormatJSON)
	}

	cfg.Level = lvl
	cfg.DisableStacktrace = true

	logger, err := cfg.Build()
	if err != nil {
		return nil, fmt.Errorf("building logger: %w", err)
	}

	return logger, nil
}

// metricsAddress is where --metrics-listen listens: a lone port (":9090" or "9090") means loopback, since
// metrics name every cluster and machine and nothing should be exposed beyond the machine unless asked for.
func metricsAddress(flag string) (string, error) {
	host, port, err := net.SplitHostPort(flag)
	if err != nil {
		if _, perr := strconv.ParseUint(flag, 10, 16); perr != nil {
			return "", fmt.Errorf("--metrics-listen %q: want HOST:PORT or a port", flag)
		}

		host, port = "", flag
	}

	if host == "" {
		host = "127.0.0.1"
	}

	return net.JoinHostPort(host, port), nil
}

// metricsShutdownGrace bounds how long a scrape in progress may finish when serve stops.
const metricsShutdownGrace = 2 * time.Second

// serveMetrics serves the engine's metrics (with the Go runtime's and the process's) on /metrics at addr until
// ctx ends; it returns once it listens, with the address it listens on.
func serveMetrics(ctx context.Context, addr string, engineMetrics prometheus.Collector, logger *zap.Logger) (net.Addr, error) {
	registry := prometheus.NewRegistry()

	if err := registry.Register(engineMetrics); err != nil {
		return nil, fmt.Errorf("registering the engine's metrics: %w", err)
	}

	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	listener, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening for metrics: %w", err)
	}

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))

	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	go func() {
		if err := srv.Serve(listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("serving metrics failed", zap.Error(err))
		}
	}()

	go func() {
		<-ctx.Done()

		shutdownCtx, cancel := context.WithTimeout(context.Background(), metricsShutdownGrace)
		defer cancel()

		_ = srv.Shutdown(shutdownCtx) //nolint:errcheck // the process is stopping; a cut scrape is retried by Prometheus
	}()

	return listener.Addr(), nil
}
