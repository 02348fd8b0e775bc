package server_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/mailer/smtptest"
	"github.com/herald-im/herald/matrix"
)

func errcode(t *testing.T, body []byte) string {
	t.Helper()
	var r struct {
		Errcode string `json:"errcode"`
		Error   string `json:"error"`
	}
	if err := json.Unmarshal(body, &r); err != nil || r.Error == "" {
		t.Fatalf("not a Matrix error: %s", body)
	}
	return r.Errcode
}

func TestVersionsAndStatus(t *testing.T) {
	t.Parallel()
	e := testenv.Start(t)
	status, body := e.Do(t, http.MethodGet, "/_matrix/identity/versions", nil, "")
	var v struct {
		Versions []string `json:"versions"`
	}
	if status != http.StatusOK || json.Unmarshal(body, &v) != nil || len(v.Versions) == 0 || v.Versions[0] != "v1.1" {
		t.Fatalf("versions: %d %s", status, body)
	}
	status, body = e.Do(t, http.MethodGet, "/_matrix/identity/v2", nil, "")
	if status != http.StatusOK || string(bytes.TrimSpace(body)) != "{}" {
		t.Fatalf("status: %d %s", status, body)
	}
}

func TestRoutingErrors(t *testing.T) {
	t.Parallel()
	e := testenv.Start(t)
	for _, path := range []string{"/", "/_matrix/identity/v2/nope", "/_matrix/identity/v3/account", "/_matrix/identity/api/v1/lookup"} {
		status, body := e.Do(t, http.MethodGet, path, nil, "")
		if status != http.StatusNotFound || errcode(t, body) != "M_UNRECOGNIZED" {
			t.Errorf("GET %s: %d %s, want 404 M_UNRECOGNIZED", path, status, body)
		}
	}
	for _, c := range []struct{ method, path string }{
		{http.MethodPost, "/_matrix/identity/versions"},
		{http.MethodDelete, "/_matrix/identity/v2/account"},
		{http.MethodGet, "/_matrix/identity/v2/account/register"},
		{http.MethodPut, "/_matrix/identity/v2/terms"},
	} {
		status, body := e.Do(t, c.method, c.path, nil, "")
		if status != http.StatusMethodNotAllowed || errcode(t, body) != "M_UNRECOGNIZED" {
			t.Errorf("%s %s: %d %s, want 405 M_UNRECOGNIZED", c.method, c.path, status, body)
		}
	}
}

func TestOversizedBody(t *testing.T) {
	t.Parallel()
	e := testenv.Start(t)
	big := `{"access_token":"` + strings.Repeat("a", matrix.MaxBodyBytes) + `","token_type":"Bearer","matrix_server_name":"hs.test"}`
	status, body := e.Do(t, http.MethodPost, "/_matrix/identity/v2/account/register", big, "")
	if status != http.StatusRequestEntityTooLarge || errcode(t, body) != "M_TOO_LARGE" {
		t.Fatalf("oversized body: %d %s", status, body)
	}
	// Without a Content-Length (chunked), too.
	req, _ := http.NewRequest(http.MethodPost, "/_matrix/identity/v2/account/register", io.MultiReader(strings.NewReader(big)))
	req.ContentLength = -1
	resp := e.DoRequest(t, req)
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || errcode(t, raw) != "M_TOO_LARGE" {
		t.Fatalf("oversized chunked body: %d %s", resp.StatusCode, raw)
	}
	if len(e.HS.Requests()) != 0 {
		t.Error("an oversized request reached the homeserver")
	}
}

func TestCORS(t *testing.T) {
	t.Parallel()
	e := testenv.Start(t)
	check := func(what string, h http.Header) {
		t.Helper()
		if h.Get("Access-Control-Allow-Origin") != "*" {
			t.Errorf("%s: Allow-Origin %q", what, h.Get("Access-Control-Allow-Origin"))
		}
		for _, m := range []string{"GET", "POST", "PUT", "DELETE", "OPTIONS"} {
			if !strings.Contains(h.Get("Access-Control-Allow-Methods"), m) {
				t.Errorf("%s: Allow-Methods %q lacks %s", what, h.Get("Access-Control-Allow-Methods"), m)
			}
		}
		for _, x := range []string{"X-Requested-With", "Content-Type", "Authorization"} {
			if !strings.Contains(h.Get("Access-Control-Allow-Headers"), x) {
				t.Errorf("%s: Allow-Headers %q lacks %s", what, h.Get("Access-Control-Allow-Headers"), x)
			}
		}
	}
	// Preflights: 204 on every path, without the endpoint's logic (no
	// authentication, no call to a homeserver).
	for _, path := range []string{"/_matrix/identity/v2/account/register", "/_matrix/identity/v2/account", "/_matrix/identity/v2/lookup", "/_matrix/identity/v2/nope"} {
		req, _ := http.NewRequest(http.MethodOptions, path, nil)
		req.Header.Set("Origin", "https://app.element.io")
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "Authorization, Content-Type")
		resp := e.DoRequest(t, req)
		if resp.StatusCode != http.StatusNoContent {
			t.Errorf("preflight %s: %d", path, resp.StatusCode)
		}
		check("OPTIONS "+path, resp.Header)
	}
	if n := len(e.HS.Requests()); n != 0 {
		t.Errorf("a preflight reached the homeserver (%d requests)", n)
	}
	// Every answer carries the headers, with or without an Origin, errors too.
	for _, c := range []struct {
		path   string
		status int
	}{
		{"/_matrix/identity/versions", http.StatusOK},
		{"/_matrix/identity/v2/account", http.StatusUnauthorized},
		{"/_matrix/identity/v2/nope", http.StatusNotFound},
	} {
		for _, origin := range []string{"", "https://app.element.io"} {
			req, _ := http.NewRequest(http.MethodGet, c.path, nil)
			if origin != "" {
				req.Header.Set("Origin", origin)
			}
			resp := e.DoRequest(t, req)
			if resp.StatusCode != c.status {
				t.Errorf("GET %s: %d, want %d", c.path, resp.StatusCode, c.status)
			}
			check("GET "+c.path+" origin="+origin, resp.Header)
		}
	}
}

// The request log names the route pattern, never the raw path or query
// (tokens, key ids, addresses).
func TestRequestLog(t *testing.T) {
	t.Parallel()
	e := testenv.Start(t)
	tok := e.Register(t, "@alice:hs.test")
	req, _ := http.NewRequest(http.MethodGet, "/_matrix/identity/v2/account?access_token="+tok, nil)
	e.DoRequest(t, req)
	e.Do(t, http.MethodGet, "/_matrix/identity/v2/pubkey/ed25519:secretish", nil, "")
	logs := e.Logs()
	for _, want := range []string{
		`msg=request method=GET route=/_matrix/identity/v2/account status=200`,
		`route=/_matrix/identity/v2/pubkey/:keyId status=404`,
		`route=/_matrix/identity/v2/account/register status=200`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
	for _, secret := range []string{tok, "secretish", "access_token="} {
		if strings.Contains(logs, secret) {
			t.Errorf("logs contain %q", secret)
		}
	}
}

// serveApp runs a fresh App on 127.0.0.1:0 with cfg, its logs written to logs,
// and returns its address and a stop function that waits for Serve to return.
func serveApp(t *testing.T, cfg *config.Config, logs io.Writer) (string, func() error) {
	t.Helper()
	ready := make(chan struct{})
	a, err := server.New(cfg, slog.New(slog.NewTextHandler(logs, nil)), server.Options{Listening: func(net.Addr) { close(ready) }})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, ln) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Serve: %v", err)
	}
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		err := <-done
		a.Close()
		return err
	}
	t.Cleanup(func() { stop() })
	return ln.Addr().String(), stop
}

func testConfig(t *testing.T) *config.Config {
	c := config.Default()
	c.ServerName = "herald.test"
	c.DataDir = t.TempDir()
	return &c
}

func TestServeSelfSignedTLS(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.TLS.SelfSigned = true
	addr, stop := serveApp(t, cfg, io.Discard)

	certPEM, err := os.ReadFile(filepath.Join(cfg.DataDir, "tls", server.SelfSignedCertFile))
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(cfg.DataDir, "tls", server.SelfSignedKeyFile)); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(certPEM) {
		t.Fatal("bad cert PEM")
	}
	get := func(host string, tlsConf *tls.Config) (*http.Response, error) {
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConf}, Timeout: 10 * time.Second}
		req, _ := http.NewRequest(http.MethodGet, "https://"+addr+"/_matrix/identity/versions", nil)
		tlsConf.ServerName = host
		return hc.Do(req)
	}
	for _, host := range []string{"herald.test", "localhost", "127.0.0.1"} {
		resp, err := get(host, &tls.Config{RootCAs: pool})
		if err != nil {
			t.Fatalf("TLS as %s: %v", host, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.TLS.Version < tls.VersionTLS12 {
			t.Errorf("TLS as %s: %d %x", host, resp.StatusCode, resp.TLS.Version)
		}
	}
	if _, err := get("herald.test", &tls.Config{RootCAs: pool, MaxVersion: tls.VersionTLS11}); err == nil {
		t.Error("TLS 1.1 accepted")
	}
	if err := stop(); err != nil {
		t.Fatalf("graceful stop: %v", err)
	}

	// A restart reuses the certificate.
	_, stop = serveApp(t, cfg, io.Discard)
	stop()
	again, _ := os.ReadFile(filepath.Join(cfg.DataDir, "tls", server.SelfSignedCertFile))
	if !bytes.Equal(again, certPEM) {
		t.Error("self-signed certificate regenerated on restart")
	}
	// A change of server_name makes a new one that covers it.
	cfg.ServerName = "id.example.org"
	_, stop = serveApp(t, cfg, io.Discard)
	stop()
	again, _ = os.ReadFile(filepath.Join(cfg.DataDir, "tls", server.SelfSignedCertFile))
	if bytes.Equal(again, certPEM) {
		t.Error("certificate not regenerated for a new server_name")
	}
}

func TestSelfSignedRenewal(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	names := []string{"herald.test", "localhost", "127.0.0.1"}
	now := time.Now()
	c1, err := server.SelfSigned(dir, names, now, log)
	if err != nil {
		t.Fatal(err)
	}
	if c1.Leaf.NotAfter.Before(now.Add(300*24*time.Hour)) || c1.Leaf.VerifyHostname("herald.test") != nil {
		t.Fatalf("certificate: until %v", c1.Leaf.NotAfter)
	}
	c2, err := server.SelfSigned(dir, names, now.Add(24*time.Hour), log)
	if err != nil || !bytes.Equal(c1.Leaf.Raw, c2.Leaf.Raw) {
		t.Fatal("certificate not reused")
	}
	// Close to expiry (and after it) a new one is made.
	later := c1.Leaf.NotAfter.Add(-time.Hour)
	c3, err := server.SelfSigned(dir, names, later, log)
	if err != nil || bytes.Equal(c1.Leaf.Raw, c3.Leaf.Raw) || !c3.Leaf.NotAfter.After(later.Add(300*24*time.Hour)) {
		t.Fatal("expiring certificate not renewed")
	}
	// A damaged file is replaced.
	if err := os.WriteFile(filepath.Join(dir, server.SelfSignedCertFile), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := server.SelfSigned(dir, names, now, log); err != nil {
		t.Fatalf("damaged certificate: %v", err)
	}
}

func TestServeCertFiles(t *testing.T) {
	t.Parallel()
	// Make a key pair with the self-signed generator, then serve it as files.
	dir := t.TempDir()
	leaf, err := server.SelfSigned(dir, []string{"id.example.org"}, time.Now(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.TLS.CertFile = filepath.Join(dir, server.SelfSignedCertFile)
	cfg.TLS.KeyFile = filepath.Join(dir, server.SelfSignedKeyFile)
	addr, stop := serveApp(t, cfg, io.Discard)
	pool := x509.NewCertPool()
	pool.AddCert(leaf.Leaf)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "id.example.org"}}, Timeout: 10 * time.Second}
	resp, err := hc.Get("https://" + addr + "/_matrix/identity/v2")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// A key file that does not match is refused at start-up, naming the keys.
	if err := os.WriteFile(cfg.TLS.KeyFile, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := server.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	if err := a.Serve(context.Background(), ln); err == nil || !strings.Contains(err.Error(), "tls.cert_file") {
		t.Fatalf("Serve with a bad key: %v", err)
	}
}

// Shutdown lets a request in flight finish.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	addr, stop := serveApp(t, cfg, io.Discard)
	// Once one request was answered, the server is accepting.
	if resp, err := http.Get("http://" + addr + "/_matrix/identity/versions"); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}
	// Open a connection and start a request whose body is still being sent.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// register reads the whole body before answering (400: parameters missing).
	// With Expect: 100-continue the server says when the handler starts
	// reading the body: the request is then in flight.
	body := `{"token_type":"Bearer"}`
	if _, err := io.WriteString(conn, "POST /_matrix/identity/v2/account/register HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: "+
		itoa(len(body))+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufioReader(conn)
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "HTTP/1.1 100") {
		t.Fatalf("no 100 Continue: %q %v", line, err)
	}
	if line, _ := br.ReadString('\n'); line != "\r\n" {
		t.Fatalf("after 100 Continue: %q", line)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	// Shutdown waits for the active connection; finishing the request lets it end.
	select {
	case err := <-stopped:
		t.Fatalf("stop returned before the request in flight finished: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if _, err := io.WriteString(conn, body); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest { // missing parameters: but it was answered
		t.Errorf("in-flight request: %d", resp.StatusCode)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("stop: %v", err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func bufioReader(r io.Reader) *bufio.Reader { return bufio.NewReader(r) }

// Nothing secret reaches the logs, at debug level, over start-up, a
// registration, authenticated calls, an invite mailed through an SMTP server
// that requires AUTH, an admin API call and a restart: not the SMTP password,
// an admin API token, an access or OpenID token, the invitee's address or
// the private signing key.
func TestLogsKeepSecrets(t *testing.T) {
	t.Parallel()
	const (
		smtpPassword = "smtp-pass-Zq8vW2"
		apiToken     = "admin-api-token-Xk4pL9mN2bV7cQ1r"
		address      = "carol.secret@example.org"
		openID       = "openid-token-Yt6hJ3"
	)
	mail := smtptest.Start(t, smtptest.Options{Username: "herald", Password: smtpPassword})
	e := testenv.Start(t, func(c *config.Config) {
		c.SMTP.Host, c.SMTP.Port = mail.Host, mail.Port
		c.SMTP.Username, c.SMTP.Password = "herald", config.Secret(smtpPassword)
		c.Admin.Enabled = true
		c.Admin.APITokens = []config.Secret{apiToken}
		c.Federation.Servers["dead.test"] = "http://127.0.0.1:1"
	})
	tok := e.Register(t, "@alice:hs.test")
	req, _ := http.NewRequest(http.MethodGet, "/_matrix/identity/v2/account?access_token="+tok, nil)
	e.DoRequest(t, req)
	e.Do(t, http.MethodPost, "/_matrix/identity/v2/account/register",
		map[string]any{"access_token": openID, "token_type": "Bearer", "matrix_server_name": "dead.test"}, "")
	status, body := e.Do(t, http.MethodPost, "/_matrix/identity/v2/store-invite", map[string]any{
		"medium": "email", "address": address, "room_id": "!room:hs.test", "sender": "@alice:hs.test",
	}, tok)
	if status != http.StatusOK {
		t.Fatalf("store-invite: %d %s", status, body)
	}
	if msgs := mail.WaitFor(1, 10*time.Second); len(msgs) != 1 || msgs[0].AuthUser != "herald" {
		t.Fatalf("the invite was not mailed with AUTH: %+v", msgs)
	}
	req, _ = http.NewRequest(http.MethodGet, "/admin/api/invites", nil)
	req.Header.Set("Authorization", "Bearer "+apiToken)
	e.DoRequest(t, req)
	e.Restart(t)

	// The private key as its JWK's "d" (data_dir/keys on bbolt, the
	// signing_keys table on PostgreSQL): the seed in unpadded base64url.
	var private struct {
		D string `json:"d"`
	}
	cur := e.App.Ring().Current()
	if len(cur.Private) == 0 {
		t.Fatal("no signing key")
	}
	private.D = base64.RawURLEncoding.EncodeToString(cur.Private.Seed())
	logs := e.Logs()
	if !strings.Contains(logs, "level=DEBUG") || !strings.Contains(logs, "store-invite") {
		t.Fatalf("the logs do not cover the run:\n%s", logs)
	}
	for name, secret := range map[string]string{"SMTP password": smtpPassword, "admin API token": apiToken,
		"access token": tok, "OpenID token": openID, "address": address, "private key": private.D} {
		if strings.Contains(strings.ToLower(logs), strings.ToLower(secret)) {
			t.Errorf("the logs contain the %s", name)
		}
	}
}

// Clients may percent-encode path parameters: /pubkey/ed25519%3Aabc answers
// exactly like /pubkey/ed25519:abc, on v2 and v1.
func TestPercentEncodedPathParams(t *testing.T) {
	t.Parallel()
	e := testenv.Start(t, func(c *config.Config) { c.Compat.V1 = true })
	id := e.App.Ring().Current().ID
	for _, prefix := range []string{"/_matrix/identity/v2", "/_matrix/identity/api/v1"} {
		status, plain := e.Do(t, http.MethodGet, prefix+"/pubkey/"+id, nil, "")
		if status != http.StatusOK {
			t.Fatalf("%s/pubkey/%s: %d %s", prefix, id, status, plain)
		}
		for _, enc := range []string{strings.ReplaceAll(id, ":", "%3A"), strings.ReplaceAll(id, ":", "%3a"), "%65" + strings.ReplaceAll(id[1:], ":", "%3A")} {
			status, body := e.Do(t, http.MethodGet, prefix+"/pubkey/"+enc, nil, "")
			if status != http.StatusOK || !bytes.Equal(body, plain) {
				t.Errorf("%s/pubkey/%s: %d %s, want %s", prefix, enc, status, body, plain)
			}
		}
		status, body := e.Do(t, http.MethodGet, prefix+"/pubkey/ed25519%3Anope", nil, "")
		if status != http.StatusNotFound || errcode(t, body) != "M_NOT_FOUND" {
			t.Errorf("unknown encoded key: %d %s", status, body)
		}
	}
}
