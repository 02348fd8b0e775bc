package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"time"
)

// ShutdownTimeout is how long Run waits for requests in flight after ctx is done.
const ShutdownTimeout = 10 * time.Second

// Run listens on the configured address and serves until ctx is done, then
// shuts down gracefully.
func (a *App) Run(ctx context.Context) error {
	tlsConf, err := a.tlsConfig()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", a.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	return a.serve(ctx, ln, tlsConf)
}

// Serve serves on ln (plain HTTP, or TLS as configured) until ctx is done.
func (a *App) Serve(ctx context.Context, ln net.Listener) error {
	tlsConf, err := a.tlsConfig()
	if err != nil {
		ln.Close()
		return err
	}
	return a.serve(ctx, ln, tlsConf)
}

func (a *App) serve(ctx context.Context, ln net.Listener, tlsConf *tls.Config) error {
	srv := &http.Server{
		Handler:           a.Handler(),
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	a.Start(ctx)
	a.serveControl(ctx)
	scheme := "http"
	if tlsConf != nil {
		scheme = "https"
	}
	a.log.Info("listening", "addr", ln.Addr().String(), "scheme", scheme, "base_url", a.cfg.BaseURL(), "server_name", a.cfg.ServerName, "version", a.version)
	if a.listening != nil {
		a.listening(ln.Addr())
	}
	adminErrc, err := a.serveAdmin(ctx, tlsConf)
	if err != nil {
		ln.Close()
		return err
	}
	metricsErrc, err := a.serveMetrics(ctx)
	if err != nil {
		ln.Close()
		return err
	}
	errc := make(chan error, 1)
	go func() {
		if tlsConf != nil {
			errc <- srv.ServeTLS(ln, "", "")
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		return err
	case err := <-adminErrc:
		return fmt.Errorf("admin console: %w", err)
	case err := <-metricsErrc:
		return fmt.Errorf("metrics: %w", err)
	case <-ctx.Done():
	}
	a.log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	a.log.Info("stopped")
	return nil
}

// tlsConfig is nil for plain HTTP, else the TLS 1.2+ configuration serving
// tls.cert_file/key_file or a self-signed certificate kept in data_dir/tls.
func (a *App) tlsConfig() (*tls.Config, error) {
	var get func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	switch {
	case a.cfg.TLS.CertFile != "":
		fc, err := newFileCert(a.cfg.TLS.CertFile, a.cfg.TLS.KeyFile, a.log)
		if err != nil {
			return nil, err
		}
		get = fc.get
	case a.cfg.TLS.SelfSigned:
		cert, err := SelfSigned(filepath.Join(a.cfg.DataDir, "tls"), a.tlsNames(), a.now(), a.log)
		if err != nil {
			return nil, err
		}
		get = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil }
	default:
		return nil, nil
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: get}, nil
}
