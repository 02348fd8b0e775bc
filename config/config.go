// Package config loads Herald's configuration: built-in defaults, then a YAML
// file, then HERALD_* environment variables, then validation. Every problem is
// reported as one line naming the key.
package config

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/mail"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Config is the whole configuration. The yaml key names are part of Herald's
// contract with operators: see herald.example.yaml.
type Config struct {
	ServerName    string     `yaml:"server_name"`
	PublicBaseURL string     `yaml:"public_base_url"`
	Listen        string     `yaml:"listen"`
	DataDir       string     `yaml:"data_dir"`
	Log           Log        `yaml:"log"`
	TLS           TLS        `yaml:"tls"`
	SMTP          SMTP       `yaml:"smtp"`
	Email         Email      `yaml:"email"`
	Federation    Federation `yaml:"federation"`
	Terms         Terms      `yaml:"terms"`
	Compat        Compat     `yaml:"compat"`
	Lookup        Lookup     `yaml:"lookup"`
	Invites       Invites    `yaml:"invites"`
	Validation    Validation `yaml:"validation"`
	Delivery      Delivery   `yaml:"delivery"`
	Admin         Admin      `yaml:"admin"`
	Account       Account    `yaml:"account"`
	Metrics       Metrics    `yaml:"metrics"`
	Storage       Storage    `yaml:"storage"`
	// TrustedProxies are the reverse proxies (IPs or CIDRs) whose
	// X-Forwarded-For Herald believes; from any other peer the client address
	// is the TCP peer.
	TrustedProxies []string `yaml:"trusted_proxies"`

	// Warnings are problems Load found that do not stop start-up, one line
	// each (unknown HERALD_* variables, doubtful combinations); the caller
	// logs them. Not a configuration key.
	Warnings []string `yaml:"-"`
}

type Metrics struct {
	// Listen is the address of the Prometheus /metrics endpoint; empty: off.
	Listen string `yaml:"listen"`
}

type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // text, json
}

type TLS struct {
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	SelfSigned bool   `yaml:"self_signed"`
}

// Enabled reports whether Herald serves TLS itself.
func (t TLS) Enabled() bool { return t.SelfSigned || t.CertFile != "" }

type SMTP struct {
	Host     string   `yaml:"host"`
	Port     int      `yaml:"port"`
	Security string   `yaml:"security"` // none, starttls, tls
	Username string   `yaml:"username"`
	Password Secret   `yaml:"password"`
	From     string   `yaml:"from"`
	Timeout  Duration `yaml:"timeout"`
	// InsecureSkipVerify accepts any certificate from the SMTP server (tests only).
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
	// MaxBackoff caps the wait between attempts at a mail the server deferred
	// (4xx or a network error); GiveUpAfter marks it failed this long after
	// it was queued (an operator can retry it from the console).
	MaxBackoff  Duration `yaml:"max_backoff"`
	GiveUpAfter Duration `yaml:"give_up_after"`
	// DevMailbox says the operator means to run without smtp.host on a
	// listener other than loopback: mail is then kept in the dev mailbox (read
	// in the console) instead of sent. Without it Herald refuses to start so.
	DevMailbox bool `yaml:"dev_mailbox"`
	// ValidationMaxBackoff caps that wait for validation mail (requestToken):
	// its code is wanted within minutes, so it is retried more often.
	ValidationMaxBackoff Duration `yaml:"validation_max_backoff"`
	// Connections is how many SMTP connections send mail at once, each kept
	// open between messages.
	Connections int `yaml:"connections"`
}

type Email struct {
	// TemplatesDir holds operator templates that replace the embedded ones.
	TemplatesDir string `yaml:"templates_dir"`
	// BrandName is shown in emails and pages.
	BrandName string `yaml:"brand_name"`
	// DefaultBrand is the directory under TemplatesDir whose templates are
	// used when a store-invite or requestToken request names no brand
	// (sydent's ?brand=) or one without templates; "" uses the templates at
	// the top of TemplatesDir.
	DefaultBrand string `yaml:"default_brand"`
	// WebClientURL is the default web client for links in invite emails.
	WebClientURL string `yaml:"web_client_url"`
	// WebClientAllowlist lists origins an invite's org.matrix.web_client_location may use.
	WebClientAllowlist []string `yaml:"web_client_allowlist"`
	// OutboxRetention deletes sent and failed mail (whose bytes hold invite
	// tokens and keys) this long after it was queued; 0 keeps it forever.
	OutboxRetention Duration `yaml:"outbox_retention"`
}

type Federation struct {
	Servers               map[string]string `yaml:"servers"`
	AllowPrivateAddresses bool              `yaml:"allow_private_addresses"`
	InsecureSkipVerify    bool              `yaml:"insecure_skip_verify"`
	Timeout               Duration          `yaml:"timeout"`
}

// Policy is one entry of the spec's terms policies object: a version plus, per
// language, a name and url.
type Policy struct {
	Version   string                    `yaml:"version" json:"version"`
	Languages map[string]PolicyLanguage `yaml:",inline" json:"-"`
}

type PolicyLanguage struct {
	Name string `yaml:"name" json:"name"`
	URL  string `yaml:"url" json:"url"`
}

type Terms struct {
	Policies map[string]Policy `yaml:"policies"`
}

type Compat struct {
	V1 bool `yaml:"v1"`
	// V1StoreInviteAllow restricts the unauthenticated v1 store-invite to
	// these client addresses (IPs or CIDRs). Empty allows any.
	V1StoreInviteAllow []string `yaml:"v1_store_invite_allow"`
}

type Lookup struct {
	// PepperRotation rotates the lookup pepper this often (0: never).
	PepperRotation Duration `yaml:"pepper_rotation"`
	// Upstream lists identity servers asked at store-invite about addresses
	// Herald has no binding for (docs/upstream.md). Empty: none is asked.
	Upstream []Upstream `yaml:"upstream"`
	// UpstreamTimeout bounds the time store-invite waits for the upstreams.
	UpstreamTimeout Duration `yaml:"upstream_timeout"`
	// UpstreamEmail is what an invitee an upstream vouched for receives by
	// email: "notify" (a Matrix invite is waiting) or "none".
	UpstreamEmail string `yaml:"upstream_email"`
}

// Upstream is one identity server Herald consults at store-invite.
type Upstream struct {
	BaseURL string `yaml:"base_url"`
	// HomeserverURL, UserID and AccessToken: the service user on the
	// operator's homeserver whose OpenID token registers Herald upstream.
	HomeserverURL string `yaml:"homeserver_url"`
	UserID        string `yaml:"user_id"`
	AccessToken   Secret `yaml:"access_token"`
	// AcceptTerms lets Herald accept the upstream's terms of service.
	AcceptTerms bool `yaml:"accept_terms"`
	// AllowPlaintext lets Herald send the address itself when the upstream
	// offers no hash but "none".
	AllowPlaintext bool `yaml:"allow_plaintext"`
	// AllowPrivate lets base_url and homeserver_url be private or loopback
	// addresses, and plain http.
	AllowPrivate bool `yaml:"allow_private"`
}

type RateLimit struct {
	// PerHour requests allowed per hour (0: unlimited); Burst allowed at once.
	PerHour float64 `yaml:"per_hour"`
	Burst   int     `yaml:"burst"`
}

type Invites struct {
	Expiry     Duration `yaml:"expiry"`    // 0: never
	Retention  Duration `yaml:"retention"` // erase tokens/keys of finished invites after this
	RateLimits struct {
		Sender     RateLimit `yaml:"sender"`
		Room       RateLimit `yaml:"room"`
		Address    RateLimit `yaml:"address"`
		Homeserver RateLimit `yaml:"homeserver"`
	} `yaml:"rate_limits"`
	Blocklist struct {
		Rooms       []string `yaml:"rooms"`
		Homeservers []string `yaml:"homeservers"`
		Keywords    []string `yaml:"keywords"`
	} `yaml:"blocklist"`
	EmailDomains struct {
		Allow []string `yaml:"allow"`
		Deny  []string `yaml:"deny"`
	} `yaml:"email_domains"`

	// ResendInterval: a repeated store-invite for a pending invite emails the
	// invitee again at most this often (0: every time).
	ResendInterval Duration `yaml:"resend_interval"`
}

type Validation struct {
	SessionLifetime Duration `yaml:"session_lifetime"`
	// RateLimits bound validation mails (requestToken): per address, per
	// account (v2) and per client IP (the unauthenticated v1 API).
	RateLimits struct {
		Address  RateLimit `yaml:"address"`
		Account  RateLimit `yaml:"account"`
		ClientIP RateLimit `yaml:"client_ip"`
	} `yaml:"rate_limits"`
}

type Delivery struct {
	// GiveUpAfter stops retrying an onbind delivery this long after it was queued.
	GiveUpAfter Duration `yaml:"give_up_after"`
	// MinBackoff is the wait after the first failed attempt; it doubles per
	// attempt up to MaxBackoff. A Retry-After from the homeserver is honoured.
	MinBackoff Duration `yaml:"min_backoff"`
	MaxBackoff Duration `yaml:"max_backoff"`
}

// Account configures identity server access tokens (/account/register).
type Account struct {
	// TokenIdleLifetime expires an access token unused this long (0: never).
	TokenIdleLifetime Duration `yaml:"token_idle_lifetime"`
}

type AdminUser struct {
	Username     string `yaml:"username"`
	PasswordHash Secret `yaml:"password_hash"`
}

type Admin struct {
	Enabled bool        `yaml:"enabled"`
	Listen  string      `yaml:"listen"` // separate address for /admin; empty: same listener
	Users   []AdminUser `yaml:"users"`
	// APITokens are bearer tokens for the JSON admin API.
	APITokens []Secret `yaml:"api_tokens"`
	// SessionLifetime is how long a console login lasts.
	SessionLifetime Duration `yaml:"session_lifetime"`
	// AuditRetention is how long audit log entries are kept; AuditMaxEntries
	// bounds how many are kept (the oldest go first).
	AuditRetention  Duration `yaml:"audit_retention"`
	AuditMaxEntries int      `yaml:"audit_max_entries"`
}

// Secret is a string that never prints.
type Secret string

func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "********"
}

// GoString masks %#v too.
func (s Secret) GoString() string { return s.String() }

// LogValue masks the secret in structured logs (slog calls it for every handler).
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON masks the secret when a configuration is shown as JSON.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// MarshalYAML masks the secret when a configuration is shown as YAML.
func (s Secret) MarshalYAML() (any, error) { return s.String(), nil }

// Default is the configuration of `go run ./cmd/herald` on a fresh clone.
func Default() Config {
	var c Config
	c.ServerName = "localhost:8090"
	c.Listen = "127.0.0.1:8090"
	c.DataDir = "herald-data"
	c.Storage = defaultStorage()
	c.Log = Log{Level: "info", Format: "text"}
	c.SMTP.Security = "starttls"
	c.SMTP.From = "Herald <herald@localhost>"
	c.SMTP.Timeout = Duration(10 * time.Second)
	c.SMTP.MaxBackoff = Duration(time.Hour)
	c.SMTP.GiveUpAfter = Duration(48 * time.Hour)
	c.SMTP.ValidationMaxBackoff = Duration(time.Minute)
	c.SMTP.Connections = 16
	c.Email.OutboxRetention = Duration(30 * 24 * time.Hour)
	c.Email.BrandName = "Herald"
	c.Email.WebClientURL = "https://app.element.io"
	c.Federation.Timeout = Duration(10 * time.Second)
	c.Lookup.PepperRotation = Duration(30 * 24 * time.Hour)
	c.Lookup.UpstreamTimeout = Duration(2 * time.Second)
	c.Lookup.UpstreamEmail = "notify"
	c.Invites.Expiry = Duration(7 * 24 * time.Hour)
	c.Invites.Retention = Duration(30 * 24 * time.Hour)
	c.Invites.ResendInterval = Duration(time.Hour)
	c.Invites.RateLimits.Sender = RateLimit{PerHour: 100, Burst: 20}
	c.Invites.RateLimits.Room = RateLimit{PerHour: 200, Burst: 50}
	c.Invites.RateLimits.Address = RateLimit{PerHour: 10, Burst: 5}
	c.Invites.RateLimits.Homeserver = RateLimit{PerHour: 2000, Burst: 200}
	c.Validation.SessionLifetime = Duration(24 * time.Hour)
	c.Validation.RateLimits.Address = RateLimit{PerHour: 5, Burst: 3}
	c.Validation.RateLimits.Account = RateLimit{PerHour: 20, Burst: 5}
	c.Validation.RateLimits.ClientIP = RateLimit{PerHour: 60, Burst: 10}
	c.Delivery.GiveUpAfter = Duration(7 * 24 * time.Hour)
	c.Delivery.MinBackoff = Duration(2 * time.Second)
	c.Delivery.MaxBackoff = Duration(10 * time.Minute)
	c.Admin.Enabled = true
	c.Admin.SessionLifetime = Duration(12 * time.Hour)
	c.Admin.AuditRetention = Duration(90 * 24 * time.Hour)
	c.Admin.AuditMaxEntries = 100000
	c.Account.TokenIdleLifetime = Duration(90 * 24 * time.Hour)
	return c
}

// BaseURL is public_base_url, or one derived from listen and TLS.
func (c *Config) BaseURL() string {
	if c.PublicBaseURL != "" {
		return strings.TrimRight(c.PublicBaseURL, "/")
	}
	scheme := "http"
	if c.TLS.Enabled() {
		scheme = "https"
	}
	host := c.Listen
	if strings.HasPrefix(host, ":") {
		host = "localhost" + host
	}
	return scheme + "://" + host
}

// SMTPPort is smtp.port or the default for smtp.security.
func (c *Config) SMTPPort() int {
	if c.SMTP.Port != 0 {
		return c.SMTP.Port
	}
	switch c.SMTP.Security {
	case "tls":
		return 465
	case "none":
		return 25
	}
	return 587
}

// wildcardListen says listen names no particular address (0.0.0.0, [::] or
// an empty host), so no URL can be derived from it.
func wildcardListen(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

// warnings are doubtful settings that still work: Load puts them in Warnings.
func (c *Config) warnings() []string {
	var out []string
	if c.ServerName == Default().ServerName && c.PublicBaseURL != "" {
		if u, err := url.Parse(c.PublicBaseURL); err == nil && u.Host != c.ServerName {
			out = append(out, fmt.Sprintf("config: server_name: still the default %q while public_base_url names %s: "+
				"homeservers know Herald by its public name, set server_name to it", c.ServerName, u.Host))
		}
	}
	return out
}

// Validate checks everything that can be checked before start-up.
func (c *Config) Validate() error {
	if c.ServerName == "" {
		return keyErr("server_name", "must not be empty")
	}
	if strings.ContainsAny(c.ServerName, "/ @") {
		return keyErr("server_name", "must be a host name with an optional port, e.g. id.example.org")
	}
	if c.PublicBaseURL != "" {
		if err := checkHTTPURL(c.PublicBaseURL); err != nil {
			return keyErr("public_base_url", err.Error())
		}
	}
	if c.Listen == "" {
		return keyErr("listen", "must not be empty")
	}
	if c.PublicBaseURL == "" && wildcardListen(c.Listen) {
		return keyErr("public_base_url", fmt.Sprintf("must be set when listen is a wildcard address (%s): "+
			"the URL derived from it would be in every key_validity_url and email link", c.Listen))
	}
	if c.DataDir == "" {
		return keyErr("data_dir", "must not be empty")
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return keyErr("log.level", fmt.Sprintf("must be debug, info, warn or error (got %q)", c.Log.Level))
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return keyErr("log.format", fmt.Sprintf("must be text or json (got %q)", c.Log.Format))
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		if c.TLS.CertFile == "" {
			return keyErr("tls.cert_file", "must be set when tls.key_file is")
		}
		return keyErr("tls.key_file", "must be set when tls.cert_file is")
	}
	if c.TLS.SelfSigned && c.TLS.CertFile != "" {
		return keyErr("tls.self_signed", "cannot be combined with tls.cert_file")
	}
	for _, f := range []struct{ key, path string }{{"tls.cert_file", c.TLS.CertFile}, {"tls.key_file", c.TLS.KeyFile}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return keyErr(f.key, fmt.Sprintf("cannot read %s: %v", f.path, unwrapPathErr(err)))
		}
	}
	switch c.SMTP.Security {
	case "none", "starttls", "tls":
	default:
		return keyErr("smtp.security", fmt.Sprintf("must be none, starttls or tls (got %q)", c.SMTP.Security))
	}
	if c.SMTP.Port < 0 || c.SMTP.Port > 65535 {
		return keyErr("smtp.port", fmt.Sprintf("must be between 1 and 65535 (got %d)", c.SMTP.Port))
	}
	if c.SMTP.From == "" {
		return keyErr("smtp.from", "must not be empty")
	}
	if _, err := mail.ParseAddress(c.SMTP.From); err != nil {
		return keyErr("smtp.from", fmt.Sprintf("is not an email address: %v", err))
	}
	if (c.SMTP.Username == "") != (c.SMTP.Password == "") {
		return keyErr("smtp.password", "smtp.username and smtp.password must be set together")
	}
	if c.SMTP.MaxBackoff <= 0 {
		return keyErr("smtp.max_backoff", "must be positive (e.g. 1h)")
	}
	if c.SMTP.GiveUpAfter <= 0 {
		return keyErr("smtp.give_up_after", "must be positive (e.g. 48h)")
	}
	if c.SMTP.ValidationMaxBackoff <= 0 {
		return keyErr("smtp.validation_max_backoff", "must be positive (e.g. 1m)")
	}
	if c.SMTP.Connections < 1 || c.SMTP.Connections > 64 {
		return keyErr("smtp.connections", "must be between 1 and 64")
	}
	if c.Email.OutboxRetention < 0 {
		return keyErr("email.outbox_retention", "must not be negative (0 keeps mail forever)")
	}
	if c.Email.WebClientURL != "" {
		if err := checkHTTPURL(c.Email.WebClientURL); err != nil {
			return keyErr("email.web_client_url", err.Error())
		}
	}
	for i, o := range c.Email.WebClientAllowlist {
		if err := checkHTTPURL(o); err != nil {
			return keyErr(fmt.Sprintf("email.web_client_allowlist[%d]", i), err.Error())
		}
	}
	if c.Email.TemplatesDir != "" {
		if st, err := os.Stat(c.Email.TemplatesDir); err != nil || !st.IsDir() {
			return keyErr("email.templates_dir", fmt.Sprintf("%s is not a readable directory", c.Email.TemplatesDir))
		}
	}
	if b := c.Email.DefaultBrand; b != "" {
		if !ValidBrand(b) {
			return keyErr("email.default_brand", "a brand is a directory name of letters, digits, '.', '_' and '-'")
		}
		if st, err := os.Stat(filepath.Join(c.Email.TemplatesDir, b)); c.Email.TemplatesDir == "" || err != nil || !st.IsDir() {
			return keyErr("email.default_brand", fmt.Sprintf("needs a directory %q under email.templates_dir", b))
		}
	}
	for name, u := range c.Federation.Servers {
		if err := checkHTTPURL(u); err != nil {
			return keyErr("federation.servers."+name, err.Error())
		}
	}
	for id, p := range c.Terms.Policies {
		if p.Version == "" {
			return keyErr("terms.policies."+id+".version", "must not be empty")
		}
		if len(p.Languages) == 0 {
			return keyErr("terms.policies."+id, "needs at least one language with name and url")
		}
		for lang, l := range p.Languages {
			if l.Name == "" {
				return keyErr("terms.policies."+id+"."+lang+".name", "must not be empty")
			}
			if err := checkHTTPURL(l.URL); err != nil {
				return keyErr("terms.policies."+id+"."+lang+".url", err.Error())
			}
		}
	}
	if c.Validation.SessionLifetime <= 0 {
		return keyErr("validation.session_lifetime", "must be positive (e.g. 24h)")
	}
	for name, rl := range map[string]RateLimit{"address": c.Validation.RateLimits.Address,
		"account": c.Validation.RateLimits.Account, "client_ip": c.Validation.RateLimits.ClientIP} {
		if rl.PerHour < 0 || rl.Burst < 0 {
			return keyErr("validation.rate_limits."+name, "per_hour and burst must not be negative (per_hour 0: unlimited)")
		}
	}
	if c.Account.TokenIdleLifetime < 0 {
		return keyErr("account.token_idle_lifetime", "must not be negative (0: tokens never expire)")
	}
	if c.Delivery.GiveUpAfter <= 0 {
		return keyErr("delivery.give_up_after", "must be positive (e.g. 7d)")
	}
	if c.Delivery.MinBackoff <= 0 || c.Delivery.MaxBackoff < c.Delivery.MinBackoff {
		return keyErr("delivery.min_backoff", "must be positive and not above delivery.max_backoff")
	}
	if err := c.validateInvites(); err != nil {
		return err
	}
	for i, a := range c.Admin.Users {
		if a.Username == "" {
			return keyErr(fmt.Sprintf("admin.users[%d].username", i), "must not be empty")
		}
		if a.PasswordHash == "" {
			return keyErr(fmt.Sprintf("admin.users[%d].password_hash", i), "must not be empty (make one with `herald admin hash-password`)")
		}
		if !strings.HasPrefix(string(a.PasswordHash), "$argon2id$") {
			return keyErr(fmt.Sprintf("admin.users[%d].password_hash", i), "must be an argon2id hash made with `herald admin hash-password`, not a password")
		}
		for _, b := range c.Admin.Users[:i] {
			if b.Username == a.Username {
				return keyErr(fmt.Sprintf("admin.users[%d].username", i), fmt.Sprintf("%q is listed twice", a.Username))
			}
		}
	}
	for i, t := range c.Admin.APITokens {
		if len(t) < 24 {
			return keyErr(fmt.Sprintf("admin.api_tokens[%d]", i), "must be at least 24 characters (e.g. `openssl rand -base64 32`)")
		}
	}
	if c.Admin.SessionLifetime <= 0 {
		return keyErr("admin.session_lifetime", "must be positive (e.g. 12h)")
	}
	if c.Admin.Listen != "" && c.Admin.Listen == c.Listen {
		return keyErr("admin.listen", "must differ from listen (leave it empty to serve /admin on the main listener)")
	}
	if c.Admin.AuditRetention <= 0 {
		return keyErr("admin.audit_retention", "must be positive (e.g. 90d)")
	}
	if c.Admin.AuditMaxEntries < 1000 {
		return keyErr("admin.audit_max_entries", fmt.Sprintf("must be at least 1000 (got %d)", c.Admin.AuditMaxEntries))
	}
	if c.SMTP.Host == "" && !c.SMTP.DevMailbox && (!LoopbackAddr(c.Listen) || c.Admin.Listen != "" && !LoopbackAddr(c.Admin.Listen)) {
		return keyErr("smtp.dev_mailbox", "smtp.host is empty and Herald listens beyond loopback: set smtp.host to send mail, "+
			"or smtp.dev_mailbox: true to keep it in the dev mailbox (read in the admin console) on purpose")
	}
	return c.validateObserve()
}

// validateObserve checks metrics.listen and trusted_proxies.
func (c *Config) validateObserve() error {
	if err := c.validateStorage(); err != nil {
		return err
	}
	if m := c.Metrics.Listen; m != "" {
		if _, port, err := net.SplitHostPort(m); err != nil || port == "" {
			return keyErr("metrics.listen", fmt.Sprintf("must be host:port, e.g. 127.0.0.1:9090 (got %q)", m))
		}
		if m == c.Listen || m == c.Admin.Listen {
			return keyErr("metrics.listen", "must differ from listen and admin.listen (metrics have their own listener)")
		}
	}
	for i, p := range c.TrustedProxies {
		if _, _, err := net.ParseCIDR(p); err != nil && net.ParseIP(p) == nil {
			return keyErr(fmt.Sprintf("trusted_proxies[%d]", i), fmt.Sprintf("%q is neither an IP address nor a CIDR range", p))
		}
	}
	return nil
}

// LoopbackAddr reports whether a listen address (host:port) binds loopback
// only: 127.0.0.0/8, ::1 or localhost. An empty host, 0.0.0.0, :: and any
// other name or address listen beyond this machine.
func LoopbackAddr(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func checkHTTPURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("is not a URL: %v", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("must be an http or https URL (got %q)", s)
	}
	if u.Host == "" {
		return fmt.Errorf("has no host (got %q)", s)
	}
	return nil
}

func unwrapPathErr(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// KeyError is a configuration problem with one key.
type KeyError struct {
	Key string
	Msg string
}

func (e *KeyError) Error() string { return "config: " + e.Key + ": " + e.Msg }

func keyErr(key, msg string) error { return &KeyError{Key: key, Msg: msg} }

// validateInvites checks the lookup, compat and invites sections.
func (c *Config) validateInvites() error {
	if c.Lookup.PepperRotation < 0 {
		return keyErr("lookup.pepper_rotation", "must not be negative (0 never rotates)")
	}
	if err := c.validateUpstream(); err != nil {
		return err
	}
	for i, a := range c.Compat.V1StoreInviteAllow {
		if _, _, err := net.ParseCIDR(a); err != nil && net.ParseIP(a) == nil {
			return keyErr(fmt.Sprintf("compat.v1_store_invite_allow[%d]", i), fmt.Sprintf("%q is neither an IP address nor a CIDR range", a))
		}
	}
	if c.Invites.Expiry < 0 {
		return keyErr("invites.expiry", "must not be negative (0: never)")
	}
	if c.Invites.ResendInterval < 0 {
		return keyErr("invites.resend_interval", "must not be negative (0: resend on every repeated store-invite)")
	}
	for name, rl := range map[string]RateLimit{"sender": c.Invites.RateLimits.Sender, "room": c.Invites.RateLimits.Room,
		"address": c.Invites.RateLimits.Address, "homeserver": c.Invites.RateLimits.Homeserver} {
		if rl.PerHour < 0 || rl.Burst < 0 {
			return keyErr("invites.rate_limits."+name, "per_hour and burst must not be negative (per_hour 0: unlimited)")
		}
	}
	for key, list := range map[string][]string{"invites.blocklist.homeservers": c.Invites.Blocklist.Homeservers,
		"invites.email_domains.allow": c.Invites.EmailDomains.Allow, "invites.email_domains.deny": c.Invites.EmailDomains.Deny} {
		for i, d := range list {
			if strings.TrimSpace(d) == "" || strings.ContainsAny(d, "@/ ") {
				return keyErr(fmt.Sprintf("%s[%d]", key, i), fmt.Sprintf("%q is not a domain (use example.org or *.example.org)", d))
			}
		}
	}
	return nil
}

// ValidBrand reports whether b can name a brand directory under
// email.templates_dir: letters, digits, '.', '_' and '-', not "." or "..".
func ValidBrand(b string) bool {
	if b == "" || b == "." || b == ".." || len(b) > 64 {
		return false
	}
	for _, r := range b {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// validateUpstream checks lookup.upstream, lookup.upstream_timeout and
// lookup.upstream_email.
func (c *Config) validateUpstream() error {
	if c.Lookup.UpstreamTimeout <= 0 || c.Lookup.UpstreamTimeout.D() > 30*time.Second {
		return keyErr("lookup.upstream_timeout", "must be more than 0 and at most 30s (store-invite waits this long)")
	}
	if c.Lookup.UpstreamEmail != "notify" && c.Lookup.UpstreamEmail != "none" {
		return keyErr("lookup.upstream_email", fmt.Sprintf("must be notify or none (got %q)", c.Lookup.UpstreamEmail))
	}
	seen := map[string]bool{}
	for i, u := range c.Lookup.Upstream {
		key := fmt.Sprintf("lookup.upstream[%d]", i)
		for _, f := range []struct{ name, v string }{{"base_url", u.BaseURL}, {"homeserver_url", u.HomeserverURL}} {
			if err := checkHTTPURL(f.v); err != nil {
				return keyErr(key+"."+f.name, err.Error())
			}
			if pu, _ := url.Parse(f.v); pu.Scheme != "https" && !u.AllowPrivate {
				return keyErr(key+"."+f.name, "must be https (plain http only with allow_private: true)")
			}
		}
		if seen[strings.TrimRight(u.BaseURL, "/")] {
			return keyErr(key+".base_url", "is listed twice")
		}
		seen[strings.TrimRight(u.BaseURL, "/")] = true
		if local, server, ok := strings.Cut(u.UserID, ":"); !ok || len(local) < 2 || local[0] != '@' || server == "" {
			return keyErr(key+".user_id", fmt.Sprintf("must be a Matrix user ID such as @herald:example.org (got %q)", u.UserID))
		}
		if u.AccessToken == "" {
			return keyErr(key+".access_token", "must be the service user's access token on homeserver_url")
		}
	}
	return nil
}
