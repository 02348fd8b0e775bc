package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/internal/pgtest"
	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/mailer/smtptest"
)

// cliEnv is cli with extra HERALD_* overrides in the environment.
func (h *herald) cliEnv(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(h.bin, append([]string{"-config", h.config}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if err != nil {
		err = &cliError{err: err, stderr: errOut.String()}
	}
	return out.String(), err
}

// writeCert writes a self-signed certificate valid from notBefore to
// notAfter and its key, returning the two paths.
func writeCert(t *testing.T, dir string, notBefore, notAfter time.Time) (string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "herald.test"}, DNSNames: []string{"herald.test"},
		NotBefore: notBefore, NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, keyPath
}

// `herald doctor` against loopback servers only: the running binary as
// public_base_url, an SMTP server with STARTTLS and AUTH, and the
// homeserver simulator for discovery (federation.servers) and
// openid/userinfo. Each broken piece makes its check fail and the exit
// status 1.
func TestDoctor(t *testing.T) {
	h, _, _, sim := newBinary(t, "", "")
	t.Cleanup(func() {
		h.stop(t)
		if t.Failed() {
			t.Logf("herald output:\n%s", h.out.String())
		}
	})
	mail := smtptest.Start(t, smtptest.Options{Security: "starttls", Username: "herald", Password: "smtp-secret-pw"})
	smtpEnv := []string{"HERALD_SMTP_HOST=" + mail.Host, "HERALD_SMTP_PORT=" + strconv.Itoa(mail.Port), "HERALD_SMTP_SECURITY=starttls",
		"HERALD_SMTP_USERNAME=herald", "HERALD_SMTP_PASSWORD=smtp-secret-pw", "HERALD_SMTP_INSECURE_SKIP_VERIFY=true"}

	// Stopped: the public URL does not answer.
	h.start(t)
	h.stop(t)
	out, err := h.cliEnv(t, smtpEnv, "doctor")
	if err == nil || !strings.Contains(out, "FAIL  public URL") || !strings.Contains(out, "not running") {
		t.Fatalf("doctor with Herald stopped: %v\n%s", err, out)
	}

	h.start(t)
	out, err = h.cliEnv(t, smtpEnv, "doctor", "--homeserver", simName, "--mail-to", "doc@example.org")
	if err != nil {
		t.Fatalf("doctor: %v\n%s", err, out)
	}
	for _, want := range []string{
		"ok    config      Herald is running",
		"ok    public URL  " + h.url + "/_matrix/identity/versions answers",
		"ok    public URL  answers as this server",
		"warn  TLS         public_base_url is http",
		"ok    SMTP        STARTTLS",
		"ok    SMTP        AUTH as herald",
		"ok    SMTP        test mail to d...@e... accepted",
		"ok    homeserver  " + simName + " is at " + sim.URL + " (Host ",
		"ok    homeserver  openid/userinfo answers (401 M_UNKNOWN_TOKEN",
		"ok    homeserver  signing keys of " + simName + ": 1",
		"0 failed",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("doctor output lacks %q", want)
		}
	}
	if strings.Contains(out, "smtp-secret-pw") || strings.Contains(out, "doc@example.org") {
		t.Errorf("doctor shows the SMTP password or the address:\n%s", out)
	}
	msgs := mail.WaitFor(1, 10*time.Second)
	if len(msgs) != 1 || msgs[0].To[0] != "doc@example.org" || !msgs[0].TLS || msgs[0].AuthUser != "herald" || !strings.Contains(string(msgs[0].Data), "Herald doctor") {
		t.Fatalf("test mail: %+v", msgs)
	}
	t.Logf("doctor output:\n%s", out)

	fails := func(env []string, want string, args ...string) {
		t.Helper()
		out, err := h.cliEnv(t, env, append([]string{"doctor"}, args...)...)
		if err == nil || !strings.Contains(err.Error(), "exit status 1") || !strings.Contains(out, want) {
			t.Errorf("doctor with %v: %v, want a line %q:\n%s", env, err, want, out)
		}
	}
	// A wrong SMTP password.
	fails(append(smtpEnv[:4:4], "HERALD_SMTP_PASSWORD=wrong", "HERALD_SMTP_INSECURE_SKIP_VERIFY=true"), "FAIL  SMTP        AUTH as herald")
	// An SMTP server without STARTTLS while smtp.security says starttls.
	plain := smtptest.Start(t, smtptest.Options{})
	fails([]string{"HERALD_SMTP_HOST=" + plain.Host, "HERALD_SMTP_PORT=" + strconv.Itoa(plain.Port), "HERALD_SMTP_SECURITY=starttls"}, "FAIL  SMTP        STARTTLS")
	// Another data_dir: the server at public_base_url is not this one.
	// On PostgreSQL the keys are in the database: another database too.
	other := filepath.Join(t.TempDir(), "other")
	otherEnv, where := []string{"HERALD_DATA_DIR=" + other}, "data_dir"
	if testenv.OnPostgres() {
		otherEnv, where = append(otherEnv, "HERALD_STORAGE_POSTGRES_DSN="+pgtest.DSN(t)), "database"
	}
	if _, err := h.cliEnv(t, otherEnv, "keys", "list"); err != nil {
		t.Fatal(err)
	}
	fails(append(otherEnv, smtpEnv...), "does not publish this "+where+"'s key")
	// An expired certificate in tls.cert_file.
	cert, key := writeCert(t, t.TempDir(), time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour))
	fails(append([]string{"HERALD_TLS_CERT_FILE=" + cert, "HERALD_TLS_KEY_FILE=" + key}, smtpEnv...), "FAIL  TLS         tls.cert_file "+cert+" expired")
	// One expiring soon is a warning.
	cert, key = writeCert(t, t.TempDir(), time.Now().Add(-time.Hour), time.Now().Add(5*24*time.Hour))
	if out, err := h.cliEnv(t, append([]string{"HERALD_TLS_CERT_FILE=" + cert, "HERALD_TLS_KEY_FILE=" + key}, smtpEnv...), "doctor"); err != nil || !strings.Contains(out, "warn  TLS         tls.cert_file "+cert+" expires in 4 days") {
		t.Errorf("soon-expiring certificate: %v\n%s", err, out)
	}
	// An https public_base_url whose certificate nobody trusts.
	tlsSrv := httptest.NewUnstartedServer(sim)
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes are the point
	tlsSrv.StartTLS()
	defer tlsSrv.Close()
	fails(append([]string{"HERALD_PUBLIC_BASE_URL=" + tlsSrv.URL}, smtpEnv...), "it serves a certificate for example.com")
}
