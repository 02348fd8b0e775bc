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
	"sync"
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
	srv := a.httpServer(a.Handler(), tlsConf, 30*time.Second)
	a.Start(ctx)
	a.serveControl(ctx)
	scheme := "http"
	if tlsConf != nil {
		scheme = "https"
	}
	adminErrc, stopAdmin, err := a.serveAdmin(tlsConf)
	if err != nil {
		ln.Close()
		return err
	}
	metricsErrc, stopMetrics, err := a.serveMetrics()
	if err != nil {
		ln.Close()
		stopAdmin(context.Background())
		return err
	}
	// "listening" is said once every listener is bound: a supervisor or test
	// that waits for it finds the console and metrics listeners up too, and
	// never a process about to exit because one of them could not bind.
	a.log.Info("listening", "addr", ln.Addr().String(), "scheme", scheme, "base_url", a.cfg.BaseURL(), "server_name", a.cfg.ServerName, "version", a.version)
	if a.listening != nil {
		a.listening(ln.Addr())
	}
	errc := make(chan error, 1)
	go func() {
		if tlsConf != nil {
			errc <- srv.ServeTLS(ln, "", "")
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	// Every listener is shut down, and its requests in flight have ended,
	// before serve returns: the caller closes the database next.
	stopAll := func() error {
		a.log.Info("shutting down")
		sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
		defer cancel()
		var wg sync.WaitGroup
		wg.Go(func() { stopAdmin(sctx) })
		wg.Go(func() { stopMetrics(sctx) })
		err := srv.Shutdown(sctx)
		wg.Wait()
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		a.log.Info("stopped")
		return nil
	}
	select {
	case err := <-errc:
		_ = stopAll()
		return err
	case err := <-adminErrc:
		_ = stopAll()
		return fmt.Errorf("admin console: %w", err)
	case err := <-metricsErrc:
		_ = stopAll()
		return fmt.Errorf("metrics: %w", err)
	case <-ctx.Done():
	}
	return stopAll()
}

// httpServer is how every listener serves h: the same header, read and idle
// timeouts, writeTimeout for an answer, server errors logged at WARN.
func (a *App) httpServer(h http.Handler, tlsConf *tls.Config, writeTimeout time.Duration) *http.Server {
	return &http.Server{
		Handler:           h,
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
}

// shutdown stops srv gracefully, waiting for its requests in flight until
// ctx ends; then it closes what is left.
func shutdown(ctx context.Context, log *slog.Logger, name string, srv *http.Server) {
	if err := srv.Shutdown(ctx); err != nil {
		log.Warn("requests still in flight at shutdown", "listener", name, "err", err)
		_ = srv.Close()
	}
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
