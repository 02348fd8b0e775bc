package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Self-signed certificate files inside data_dir/tls.
const (
	SelfSignedCertFile = "cert.pem"
	SelfSignedKeyFile  = "key.pem"
	selfSignedLifetime = 365 * 24 * time.Hour
	// renewBefore regenerates a self-signed certificate this long before it expires.
	renewBefore = 7 * 24 * time.Hour
)

// tlsNames are the names a self-signed certificate covers: the host of
// server_name and of public_base_url, localhost and the loopback addresses.
func (a *App) tlsNames() []string {
	names := []string{hostOf(a.cfg.ServerName)}
	if a.cfg.PublicBaseURL != "" {
		if u, err := url.Parse(a.cfg.PublicBaseURL); err == nil && u.Hostname() != "" {
			names = append(names, u.Hostname())
		}
	}
	names = append(names, "localhost", "127.0.0.1", "::1")
	seen := map[string]bool{}
	out := names[:0]
	for _, n := range names {
		if n != "" && !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out
}

func hostOf(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

// SelfSigned returns the self-signed certificate kept in dir, generating a
// new one (ECDSA P-256, valid a year) when there is none, when it expires
// within a week, or when it does not cover every name.
func SelfSigned(dir string, names []string, now time.Time, log *slog.Logger) (*tls.Certificate, error) {
	certPath, keyPath := filepath.Join(dir, SelfSignedCertFile), filepath.Join(dir, SelfSignedKeyFile)
	if cert, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil {
		if reason := unusable(cert.Leaf, names, now); reason == "" {
			log.Info("using self-signed TLS certificate", "file", certPath, "sha256", fingerprint(cert.Leaf), "expires", cert.Leaf.NotAfter)
			return &cert, nil
		} else {
			log.Info("regenerating self-signed TLS certificate", "file", certPath, "reason", reason)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		log.Warn("regenerating unreadable self-signed TLS certificate", "file", certPath, "err", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("tls.self_signed: %w", err)
	}
	certPEM, keyPEM, err := generateSelfSigned(names, now)
	if err != nil {
		return nil, fmt.Errorf("tls.self_signed: %w", err)
	}
	if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("tls.self_signed: %w", err)
	}
	if err := os.WriteFile(certPath, certPEM, 0o644); err != nil {
		return nil, fmt.Errorf("tls.self_signed: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("tls.self_signed: %w", err)
	}
	log.Info("generated self-signed TLS certificate", "file", certPath, "sha256", fingerprint(cert.Leaf), "names", names, "expires", cert.Leaf.NotAfter)
	return &cert, nil
}

func unusable(leaf *x509.Certificate, names []string, now time.Time) string {
	if leaf == nil {
		return "no certificate"
	}
	if now.Add(renewBefore).After(leaf.NotAfter) {
		return "expired or about to expire"
	}
	for _, n := range names {
		if leaf.VerifyHostname(n) != nil {
			return "does not cover " + n
		}
	}
	return ""
}

func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

func generateSelfSigned(names []string, now time.Time) (certPEM, keyPEM []byte, err error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: names[0], Organization: []string{"Herald (self-signed)"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(selfSignedLifetime),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// fileCert serves tls.cert_file/key_file and reloads them when either file
// changes (a renewed certificate is picked up without a restart).
type fileCert struct {
	certPath, keyPath string
	log               *slog.Logger

	mu      sync.Mutex
	cert    *tls.Certificate
	mod     [2]time.Time
	checked time.Time
}

func newFileCert(certPath, keyPath string, log *slog.Logger) (*fileCert, error) {
	fc := &fileCert{certPath: certPath, keyPath: keyPath, log: log}
	if err := fc.load(); err != nil {
		return nil, err
	}
	return fc, nil
}

func (fc *fileCert) modTimes() ([2]time.Time, error) {
	var m [2]time.Time
	for i, p := range []string{fc.certPath, fc.keyPath} {
		st, err := os.Stat(p)
		if err != nil {
			return m, err
		}
		m[i] = st.ModTime()
	}
	return m, nil
}

func (fc *fileCert) load() error {
	m, err := fc.modTimes()
	if err != nil {
		return fmt.Errorf("config: tls.cert_file: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(fc.certPath, fc.keyPath)
	if err != nil {
		return fmt.Errorf("config: tls.cert_file/tls.key_file: cannot load the key pair: %v", err)
	}
	fc.cert, fc.mod = &cert, m
	fc.log.Info("loaded TLS certificate", "file", fc.certPath, "sha256", fingerprint(cert.Leaf), "expires", cert.Leaf.NotAfter)
	return nil
}

func (fc *fileCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if time.Since(fc.checked) > 10*time.Second {
		fc.checked = time.Now()
		if m, err := fc.modTimes(); err == nil && m != fc.mod {
			if err := fc.load(); err != nil {
				fc.log.Error("reloading TLS certificate; keeping the previous one", "err", err)
			}
		}
	}
	return fc.cert, nil
}
