package main

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/mail"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/federation"
	"github.com/herald-im/herald/internal/control"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/matrix"
)

const doctorUsage = `usage: herald doctor [--homeserver NAME] [--mail-to ADDRESS] [--timeout 10s]

Checks a deployment as an operator would, one line per check (ok, warn,
FAIL); the exit status is 1 when a check failed:

  config       the configuration loads; data_dir, signing keys, whether
               Herald runs (its control socket answers)
  public URL   GET public_base_url/_matrix/identity/versions answers, and
               the server there publishes this data_dir's signing key
  TLS          the certificate public_base_url serves (trusted, names the
               host, days to expiry) and tls.cert_file when set
  SMTP         connect, STARTTLS (or implicit TLS), AUTH; with --mail-to a
               test mail to ADDRESS
  homeserver   with --homeserver NAME: server discovery for NAME (as Herald
               does it, federation.servers included), its
               openid/userinfo endpoint (used by /account/register) and
               its signing keys

It changes nothing and needs no running Herald (the public URL checks then fail).`

// certWarnDays: a certificate expiring sooner than this is a warning.
const certWarnDays = 21

type doctor struct {
	out          io.Writer
	fails, warns int
}

func (d *doctor) line(level, check, format string, args ...any) {
	fmt.Fprintf(d.out, "%-4s  %-10s  %s\n", level, check, fmt.Sprintf(format, args...))
}
func (d *doctor) ok(check, format string, args ...any) { d.line("ok", check, format, args...) }
func (d *doctor) warn(check, format string, args ...any) {
	d.warns++
	d.line("warn", check, format, args...)
}
func (d *doctor) fail(check, format string, args ...any) {
	d.fails++
	d.line("FAIL", check, format, args...)
}

// doctorCommand runs the deployment checks.
func doctorCommand(ctx context.Context, cfg *config.Config, log *slog.Logger, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("doctor", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	homeserver := fs.String("homeserver", "", "")
	mailTo := fs.String("mail-to", "", "")
	timeout := fs.Duration("timeout", 10*time.Second, "")
	if len(args) == 1 && args[0] == "help" {
		fmt.Fprintln(stdout, doctorUsage)
		return nil
	}
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 || *timeout <= 0 {
		return usageError(doctorUsage)
	}
	if *mailTo != "" {
		if _, err := mail.ParseAddress(*mailTo); err != nil {
			return usageError(fmt.Sprintf("--mail-to: not an email address (%v)", err))
		}
	}
	d := &doctor{out: stdout}
	cur, where := d.checkConfig(ctx, cfg)
	d.checkPublicURL(ctx, cfg, cur, where, *timeout)
	d.checkTLS(ctx, cfg, *timeout)
	d.checkSMTP(ctx, cfg, *mailTo, *timeout)
	if *homeserver != "" {
		d.checkHomeserver(ctx, cfg, *homeserver, *timeout)
	}
	fmt.Fprintf(stdout, "%d failed, %d warnings\n", d.fails, d.warns)
	if d.fails > 0 {
		return fmt.Errorf("doctor: %d checks failed", d.fails)
	}
	return nil
}

// checkConfig reports the configuration and data_dir, and returns the
// current signing key when the storage holds one (nil otherwise), with where
// it is kept ("data_dir" or "database"). It writes nothing.
func (d *doctor) checkConfig(ctx context.Context, cfg *config.Config) (cur *keys.Key, where string) {
	d.ok("config", "server_name %s, public_base_url %s, listen %s", cfg.ServerName, cfg.BaseURL(), cfg.Listen)
	st, err := os.Stat(cfg.DataDir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		d.warn("config", "data_dir %s does not exist yet (Herald creates it at first start)", cfg.DataDir)
		return nil, ""
	case err != nil:
		d.fail("config", "data_dir %s: %v", cfg.DataDir, err)
		return nil, ""
	case !st.IsDir():
		d.fail("config", "data_dir %s is not a directory", cfg.DataDir)
		return nil, ""
	}
	d.ok("config", "data_dir %s", cfg.DataDir)
	if cfg.Storage.Backend == config.StoragePostgres {
		cur, where = d.currentKeyPG(ctx, cfg), "database"
	} else {
		where = "data_dir"
		keyDir := filepath.Join(cfg.DataDir, "keys")
		if _, err := os.Stat(filepath.Join(keyDir, "ring.json")); err != nil {
			d.warn("config", "no signing keys in %s yet (Herald makes one at first start)", keyDir)
		} else if ring, err := keys.OpenRing(keyDir, cfg.ServerName); err != nil {
			d.fail("config", "signing keys: %v", err)
		} else {
			k := ring.Current()
			cur = &k
			d.ok("config", "signing key %s is current", k.ID)
		}
	}
	if conn, err := net.DialTimeout("unix", control.Path(cfg.DataDir), time.Second); err == nil {
		conn.Close()
		d.ok("config", "Herald is running on this data_dir (its control socket answers)")
	} else {
		d.warn("config", "no Herald answers on %s: it is not running on this data_dir", control.Path(cfg.DataDir))
	}
	return cur, where
}

// currentKeyPG reads the current signing key from the signing_keys table
// (storage.backend postgres) on a connection of its own, with one SELECT: no
// migration, nothing written. Errors name the problem, never the DSN.
func (d *doctor) currentKeyPG(ctx context.Context, cfg *config.Config) *keys.Key {
	pc, err := pgx.ParseConfig(string(cfg.Storage.Postgres.DSN))
	if err != nil {
		d.fail("config", "storage.postgres.dsn is not a valid PostgreSQL connection string")
		return nil
	}
	pc.ConnectTimeout = 5 * time.Second
	conn, err := pgx.ConnectConfig(ctx, pc)
	if err != nil {
		d.fail("config", "PostgreSQL: %v", err)
		return nil
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var id string
	var seed []byte
	err = conn.QueryRow(ctx, `SELECT id, private_key FROM signing_keys WHERE is_current`).Scan(&id, &seed)
	var pgErr *pgconn.PgError
	switch {
	case errors.Is(err, pgx.ErrNoRows), errors.As(err, &pgErr) && pgErr.Code == "42P01": // undefined_table
		d.warn("config", "no signing keys in the database yet (Herald makes one at first start)")
		return nil
	case err != nil:
		d.fail("config", "signing keys in the database: %v", err)
		return nil
	case len(seed) != ed25519.SeedSize:
		d.fail("config", "signing key %s in the database: %d bytes, not an ed25519 seed", id, len(seed))
		return nil
	}
	priv := ed25519.NewKeyFromSeed(seed)
	d.ok("config", "signing key %s is current (in the database)", id)
	return &keys.Key{ID: id, Public: priv.Public().(ed25519.PublicKey), Current: true}
}

func (d *doctor) checkPublicURL(ctx context.Context, cfg *config.Config, cur *keys.Key, where string, timeout time.Duration) {
	base := cfg.BaseURL()
	client := &http.Client{Timeout: timeout}
	get := func(path string, v any) (int, error) {
		req, err := http.NewRequestWithContext(ctx, "GET", base+path, nil)
		if err != nil {
			return 0, err
		}
		req.Header.Set("User-Agent", "Herald-doctor/"+fullVersion())
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if err != nil {
			return resp.StatusCode, err
		}
		if resp.StatusCode == 200 {
			if err := json.Unmarshal(raw, v); err != nil {
				return resp.StatusCode, fmt.Errorf("not JSON: %w", err)
			}
		}
		return resp.StatusCode, nil
	}
	var versions struct {
		Versions []string `json:"versions"`
	}
	status, err := get("/_matrix/identity/versions", &versions)
	switch {
	case err != nil:
		d.fail("public URL", "GET %s/_matrix/identity/versions: %v", base, err)
		return
	case status != 200:
		d.fail("public URL", "GET %s/_matrix/identity/versions answered %d (a proxy not forwarding /_matrix/identity to Herald?)", base, status)
		return
	case len(versions.Versions) == 0:
		d.fail("public URL", "GET %s/_matrix/identity/versions lists no versions: not an identity server", base)
		return
	}
	v := versions.Versions
	d.ok("public URL", "%s/_matrix/identity/versions answers (%s to %s)", base, v[0], v[len(v)-1])
	if cur == nil {
		d.warn("public URL", "no local signing key to check that this Herald answers there")
		return
	}
	var pk struct {
		PublicKey string `json:"public_key"`
	}
	status, err = get("/_matrix/identity/v2/pubkey/"+url.PathEscape(cur.ID), &pk)
	switch {
	case err != nil:
		d.fail("public URL", "GET pubkey %s: %v", cur.ID, err)
	case status != 200 || pk.PublicKey != cur.PublicBase64():
		d.fail("public URL", "the server at %s does not publish this %s's key %s: another server (or another %s) answers there", base, where, cur.ID, where)
	default:
		d.ok("public URL", "answers as this server (publishes key %s)", cur.ID)
	}
}

func (d *doctor) checkTLS(ctx context.Context, cfg *config.Config, timeout time.Duration) {
	if cfg.TLS.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			d.fail("TLS", "tls.cert_file/key_file: %v", err)
		} else if leaf, err := x509.ParseCertificate(pair.Certificate[0]); err != nil {
			d.fail("TLS", "tls.cert_file: %v", err)
		} else {
			d.certExpiry("tls.cert_file "+cfg.TLS.CertFile, leaf)
		}
	}
	if cfg.TLS.SelfSigned {
		d.warn("TLS", "tls.self_signed: homeservers (Synapse, Dendrite) refuse a self-signed certificate; use a real one in production")
	}
	u, err := url.Parse(cfg.BaseURL())
	if err != nil {
		d.fail("TLS", "public_base_url: %v", err)
		return
	}
	if u.Scheme != "https" {
		d.warn("TLS", "public_base_url is %s: Synapse and Dendrite call identity servers over https only", u.Scheme)
		return
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "443"
	}
	dialer := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := dialer.DialContext(cctx, "tcp", net.JoinHostPort(host, port))
	if err == nil {
		leaf := conn.(*tls.Conn).ConnectionState().PeerCertificates[0]
		conn.Close()
		d.certExpiry(fmt.Sprintf("certificate of %s (trusted, issued by %s)", u.Host, leaf.Issuer.CommonName), leaf)
		return
	}
	d.fail("TLS", "%s: %v", u.Host, err)
	// Say what the certificate is, even an untrusted one.
	insecure := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: &tls.Config{ServerName: host, InsecureSkipVerify: true}}
	if conn, err := insecure.DialContext(cctx, "tcp", net.JoinHostPort(host, port)); err == nil {
		leaf := conn.(*tls.Conn).ConnectionState().PeerCertificates[0]
		conn.Close()
		d.line("", "TLS", "it serves a certificate for %s issued by %q, valid until %s", strings.Join(leaf.DNSNames, ", "), leaf.Issuer.CommonName, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
}

func (d *doctor) certExpiry(what string, leaf *x509.Certificate) {
	left := time.Until(leaf.NotAfter)
	days := int(left.Hours() / 24)
	until := leaf.NotAfter.UTC().Format(time.RFC3339)
	switch {
	case left <= 0:
		d.fail("TLS", "%s expired at %s", what, until)
	case time.Now().Before(leaf.NotBefore):
		d.fail("TLS", "%s is not valid before %s", what, leaf.NotBefore.UTC().Format(time.RFC3339))
	case days < certWarnDays:
		d.warn("TLS", "%s expires in %d days (%s): renew it", what, days, until)
	default:
		d.ok("TLS", "%s valid until %s (%d days)", what, until, days)
	}
}

func (d *doctor) checkSMTP(ctx context.Context, cfg *config.Config, mailTo string, timeout time.Duration) {
	sc := cfg.SMTP
	if sc.Host == "" {
		d.warn("SMTP", "no smtp.host: mail goes to the dev mailbox, nobody receives invites")
		if mailTo != "" {
			d.fail("SMTP", "no test mail sent: smtp.host is not set")
		}
		return
	}
	security := sc.Security
	if security == "" {
		security = "starttls"
	}
	port := sc.Port
	if port == 0 {
		port = map[string]int{"tls": 465, "none": 25}[security]
		if port == 0 {
			port = 587
		}
	}
	addr := net.JoinHostPort(sc.Host, strconv.Itoa(port))
	raw, err := (&net.Dialer{Timeout: timeout}).DialContext(ctx, "tcp", addr)
	if err != nil {
		d.fail("SMTP", "connect %s: %v", addr, err)
		return
	}
	defer raw.Close()
	// go-smtp resets deadlines per command: bound the whole exchange instead.
	sctx, cancel := context.WithTimeout(ctx, 4*timeout)
	defer cancel()
	defer context.AfterFunc(sctx, func() { raw.Close() })()
	d.ok("SMTP", "connected to %s", addr)
	tlsCfg := &tls.Config{ServerName: sc.Host, InsecureSkipVerify: sc.InsecureSkipVerify, MinVersion: tls.VersionTLS12}
	var c *smtp.Client
	starttls := false
	switch security {
	case "tls":
		tc := tls.Client(raw, tlsCfg)
		if err := tc.HandshakeContext(sctx); err != nil {
			d.fail("SMTP", "TLS handshake: %v", err)
			return
		}
		d.ok("SMTP", "implicit TLS (%s)", tls.VersionName(tc.ConnectionState().Version))
		c = smtp.NewClient(tc)
	case "none":
		c = smtp.NewClient(raw)
		d.warn("SMTP", "smtp.security none: mail leaves unencrypted")
	default:
		var err error
		if c, err = smtp.NewClientStartTLS(raw, tlsCfg); err != nil {
			d.fail("SMTP", "STARTTLS (smtp.security is starttls): %v", err)
			return
		}
		starttls = true
	}
	defer c.Close()
	c.CommandTimeout = timeout
	// After STARTTLS the handshake happens with this EHLO.
	if err := c.Hello(heloName()); err != nil {
		if starttls {
			d.fail("SMTP", "STARTTLS: %v", err)
		} else {
			d.fail("SMTP", "EHLO: %v", err)
		}
		return
	}
	if starttls {
		st, _ := c.TLSConnectionState()
		d.ok("SMTP", "STARTTLS (%s)", tls.VersionName(st.Version))
	}
	if sc.Username != "" {
		var a sasl.Client
		switch {
		case c.SupportsAuth(sasl.Plain):
			a = sasl.NewPlainClient("", sc.Username, string(sc.Password))
		case c.SupportsAuth(sasl.Login):
			a = sasl.NewLoginClient(sc.Username, string(sc.Password))
		default:
			d.fail("SMTP", "the server offers neither AUTH PLAIN nor AUTH LOGIN")
			return
		}
		if err := c.Auth(a); err != nil {
			d.fail("SMTP", "AUTH as %s: %v", sc.Username, err)
			return
		}
		d.ok("SMTP", "AUTH as %s", sc.Username)
	} else {
		d.ok("SMTP", "no smtp.username: sending without AUTH")
	}
	if mailTo == "" {
		_ = c.Quit()
		return
	}
	from, err := mail.ParseAddress(sc.From)
	if err != nil {
		d.fail("SMTP", "smtp.from: %v", err)
		return
	}
	msg := fmt.Sprintf("From: %s\r\nTo: <%s>\r\nSubject: Herald doctor: test mail from %s\r\nDate: %s\r\nMessage-ID: <doctor.%d@%s>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n`herald doctor` on %s sent this mail to check the SMTP settings.\r\n",
		sc.From, mailTo, cfg.ServerName, time.Now().UTC().Format(time.RFC1123Z), time.Now().UnixNano(), cfg.ServerName, cfg.ServerName)
	if err := c.SendMail(from.Address, []string{mailTo}, strings.NewReader(msg)); err != nil {
		d.fail("SMTP", "test mail to %s: %v", matrix.RedactEmail(mailTo), err)
		return
	}
	_ = c.Quit()
	d.ok("SMTP", "test mail to %s accepted by the server", matrix.RedactEmail(mailTo))
}

func heloName() string {
	if h, err := os.Hostname(); err == nil && h != "" && !strings.ContainsAny(h, " \t\r\n") {
		return h
	}
	return "localhost"
}

func (d *doctor) checkHomeserver(ctx context.Context, cfg *config.Config, name string, timeout time.Duration) {
	fed := federation.New(federation.Options{
		Servers:               cfg.Federation.Servers,
		AllowPrivateAddresses: cfg.Federation.AllowPrivateAddresses,
		InsecureSkipVerify:    cfg.Federation.InsecureSkipVerify,
		Timeout:               timeout,
		UserAgent:             "Herald-doctor/" + fullVersion(),
	})
	base, host, err := fed.Endpoint(ctx, name)
	if err != nil {
		d.fail("homeserver", "server discovery for %s: %v", name, err)
		return
	}
	how := "discovery (.well-known, SRV, port 8448)"
	if _, ok := cfg.Federation.Servers[name]; ok {
		how = "federation.servers"
	}
	d.ok("homeserver", "%s is at %s (Host %s) by %s", name, base, host, how)
	resp, err := fed.Do(ctx, name, "GET", "/_matrix/federation/v1/openid/userinfo", url.Values{"access_token": {"herald-doctor-made-up-token"}}, nil, nil, 5<<10)
	switch {
	case errors.Is(err, federation.ErrForbiddenAddress):
		d.fail("homeserver", "openid/userinfo: %v (federation.allow_private_addresses allows it)", err)
	case err != nil:
		d.fail("homeserver", "openid/userinfo: %v", err)
	case resp.Status == 401 || resp.Status == 403:
		var e struct {
			Errcode string `json:"errcode"`
		}
		_ = json.Unmarshal(resp.Body, &e)
		d.ok("homeserver", "openid/userinfo answers (%d %s to a made-up token): /account/register can check users of %s", resp.Status, e.Errcode, name)
	case resp.Status == 404:
		d.fail("homeserver", "openid/userinfo answered 404: %s serves no federation API there (Synapse: the federation or openid listener resource)", name)
	default:
		d.fail("homeserver", "openid/userinfo answered %d to a made-up token, want 401", resp.Status)
	}
	if sk, err := fed.FetchServerKeys(ctx, name); err != nil {
		d.warn("homeserver", "signing keys of %s: %v", name, err)
	} else {
		d.ok("homeserver", "signing keys of %s: %d", name, len(sk.Keys))
	}
}
