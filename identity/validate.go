package identity

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/ratelimit"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/matrix"
	"github.com/herald-im/herald/store"
)

// Email validation sessions (requestToken / submitToken), each found by its
// sid, and requestToken's de-duplication keys: sha256(client_secret 0 medium
// 0 address) -> sid. Tokens and client secrets are stored as SHA-256 hashes
// only and compared in constant time.

//go:embed templates
var templatesFS embed.FS

// DefaultTemplates are the embedded validation email templates
// (validation.subject.txt, validation.txt, validation.html).
func DefaultTemplates() fs.FS {
	sub, _ := fs.Sub(templatesFS, "templates")
	return sub
}

// SubmitTokenPage is the file name, in email.templates_dir, that replaces the
// page the validation link shows.
const SubmitTokenPage = "submit_token.html"

// MaxTokensPerSession bounds how many emailed tokens (one per send_attempt)
// stay valid at once; the oldest is forgotten first.
const MaxTokensPerSession = 5

// Session is an email validation session.
type Session struct {
	SID         string    `json:"sid"`
	SecretHash  []byte    `json:"secret_hash"`
	Medium      string    `json:"medium"`
	Address     string    `json:"address"`
	SendAttempt int       `json:"send_attempt"`
	TokenHashes [][]byte  `json:"token_hashes"`
	NextLink    string    `json:"next_link,omitempty"`
	Created     time.Time `json:"created"`
	Updated     time.Time `json:"updated"` // the session expires SessionLifetime after this
	Validated   time.Time `json:"validated,omitzero"`
	MailID      uint64    `json:"mail_id,omitempty"`
}

// ValidationOptions configure email validation and binding (EnableValidation).
type ValidationOptions struct {
	// Mail queues validation emails (inside the session's transaction).
	Mail *mailer.Queue
	// TemplatesDir overrides the embedded templates (email.templates_dir).
	TemplatesDir string
	// BaseURL is Herald's public base URL, for the link in the email.
	BaseURL string
	// Brand is shown in emails and pages.
	Brand string
	// SessionLifetime: a session expires this long after its last change.
	SessionLifetime time.Duration
	// ServerName is Herald's server_name (the X-Matrix destination).
	ServerName string
	// Keys fetches homeserver keys for X-Matrix signed unbinds.
	Keys ServerKeyer
	// Limits bound the validation mails requestToken sends (zero: unlimited).
	Limits ValidationLimits
	// DefaultBrand is email.default_brand (brand.go).
	DefaultBrand string
}

// ValidationLimits are validation.rate_limits: validation mails per address,
// per account (v2) and per client IP (v1, which is unauthenticated).
type ValidationLimits struct {
	Address, Account, ClientIP config.RateLimit
}

type validation struct {
	opts  ValidationOptions
	email *mailer.Templates
	page  *htmltemplate.Template
	// In-memory token buckets for validation mail (nil: unlimited).
	perAddress, perAccount, perClient *ratelimit.Set

	// brands are the validation templates per brand (brand.go).
	brands map[string]*mailer.Templates
}

// EnableValidation loads the validation templates (a broken one is an error
// naming the file) and turns on requestToken, submitToken, bind and unbind.
func (s *Service) EnableValidation(opts ValidationOptions) error {
	if opts.SessionLifetime <= 0 {
		opts.SessionLifetime = 24 * time.Hour
	}
	if opts.Brand == "" {
		opts.Brand = "Herald"
	}
	opts.BaseURL = strings.TrimRight(opts.BaseURL, "/")
	t, err := mailer.LoadTemplates(DefaultTemplates(), opts.TemplatesDir, "validation")
	if err != nil {
		return err
	}
	if err := t.Check(validationData("user@example.org", "sample-token", "https://id.example.org/link", "sample-sid", opts.Brand)); err != nil {
		return err
	}
	pageSrc, err := fs.ReadFile(templatesFS, "templates/pages/"+SubmitTokenPage)
	if err != nil {
		return err
	}
	pageName := "embedded:" + SubmitTokenPage
	if opts.TemplatesDir != "" {
		p := filepath.Join(opts.TemplatesDir, SubmitTokenPage)
		if b, err := os.ReadFile(p); err == nil {
			pageSrc, pageName = b, p
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("identity: template %s: %w", p, err)
		}
	}
	page, err := htmltemplate.New(pageName).Option("missingkey=error").Parse(string(pageSrc))
	if err != nil {
		return fmt.Errorf("identity: template %s: %w", pageName, err)
	}
	if err := page.Execute(&bytes.Buffer{}, pageData{Brand: opts.Brand, Success: false, Reason: "x"}); err != nil {
		return fmt.Errorf("identity: template %s: %w", pageName, err)
	}
	brands, err := loadValidationBrands(opts)
	if err != nil {
		return err
	}
	if b := brands[opts.DefaultBrand]; b != nil {
		t = b
	}
	l := opts.Limits
	s.val = &validation{opts: opts, email: t, brands: brands, page: page,
		perAddress: ratelimit.New(l.Address.PerHour, l.Address.Burst, 0),
		perAccount: ratelimit.New(l.Account.PerHour, l.Account.Burst, 0),
		perClient:  ratelimit.New(l.ClientIP.PerHour, l.ClientIP.Burst, 0)}
	return nil
}

func validationData(to, token, link, sid, brand string) map[string]any {
	return map[string]any{
		"to": to, "token": token, "link": link, "sid": sid, "brand_name": brand,
		"brand": brand,
	}
}

type pageData struct {
	Brand   string
	Success bool
	Reason  string
}

var clientSecretRE = regexp.MustCompile(`^[0-9a-zA-Z.=_-]{1,255}$`)

func sha(parts ...string) []byte {
	h := sha256.New()
	for i, p := range parts {
		if i > 0 {
			h.Write([]byte{0})
		}
		h.Write([]byte(p))
	}
	return h.Sum(nil)
}

func randomString(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// Errors of the session endpoints.
var (
	errNoSession    = matrix.NoValidSession("No valid session was found matching that sid and client secret")
	errExpired      = matrix.SessionExpired("This validation session has expired: request a new token")
	errNotValidated = matrix.SessionNotValidated("This validation session has not yet been completed")
	errBadToken     = matrix.TokenIncorrect("The token is incorrect")
)

func (s *Service) validator() (*validation, error) {
	if s.val == nil {
		return nil, matrix.ServerUnavailable("Email validation is not configured")
	}
	return s.val, nil
}

// sessionTx loads sid and checks client_secret; it does not check expiry.
func (s *Service) sessionTx(tx *store.Tx, sid, clientSecret string) (*Session, error) {
	se, err := s.st.session(tx, sid)
	if err != nil {
		return nil, err
	}
	if se == nil || subtle.ConstantTimeCompare(se.SecretHash, sha(clientSecret)) != 1 {
		return nil, errNoSession
	}
	return se, nil
}

func (v *validation) expired(se *Session, now time.Time) bool {
	return now.After(se.Updated.Add(v.opts.SessionLifetime))
}

// ValidatedSession returns the session if it exists, matches clientSecret,
// has not expired and was validated.
func (s *Service) ValidatedSession(sid, clientSecret string) (*Session, error) {
	v, err := s.validator()
	if err != nil {
		return nil, err
	}
	var se *Session
	err = s.db.View(func(tx *store.Tx) error {
		se, err = s.sessionTx(tx, sid, clientSecret)
		return err
	})
	if err != nil {
		return nil, err
	}
	if v.expired(se, s.opts.Now()) {
		return nil, errExpired
	}
	if se.Validated.IsZero() {
		return nil, errNotValidated
	}
	return se, nil
}

// requestTokenReq is the body of requestToken (JSON, or the deprecated form encoding).
type requestTokenReq struct {
	ClientSecret string          `json:"client_secret"`
	Email        string          `json:"email"`
	SendAttempt  json.RawMessage `json:"send_attempt"`
	NextLink     string          `json:"next_link"`
}

// decodeBody decodes a JSON body, or a form-encoded one (deprecated but
// allowed by the spec) into the string fields named by their json tags.
func decodeBody(c echo.Context, v any) error { return matrix.DecodeParams(c, v, matrix.Params{}) }

// clientIP is the client's address: the TCP peer, or what Echo's
// IPExtractor (set from trusted_proxies) finds. Without an extractor,
// forwarding headers are not trusted: anyone could send them.
func clientIP(c echo.Context) string {
	if c.Echo().IPExtractor != nil {
		return c.RealIP()
	}
	host, _, err := net.SplitHostPort(c.Request().RemoteAddr)
	if err != nil {
		return c.Request().RemoteAddr
	}
	return host
}

func parseSendAttempt(raw json.RawMessage) (int, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return 0, matrix.MissingParams("Missing parameters: send_attempt")
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		var str string
		if json.Unmarshal(raw, &str) != nil {
			return 0, matrix.InvalidParam("send_attempt must be an integer")
		}
		n = json.Number(str)
	}
	i, err := strconv.ParseInt(string(n), 10, 32)
	if err != nil || i < 0 {
		return 0, matrix.InvalidParam("send_attempt must be a non-negative integer")
	}
	return int(i), nil
}

// RequestEmailToken serves POST /validate/email/requestToken.
func (s *Service) RequestEmailToken(c echo.Context) error {
	v, err := s.validator()
	if err != nil {
		return err
	}
	var req requestTokenReq
	if err := decodeBody(c, &req); err != nil {
		return err
	}
	if err := matrix.Require("client_secret", req.ClientSecret, "email", req.Email); err != nil {
		return err
	}
	attempt, err := parseSendAttempt(req.SendAttempt)
	if err != nil {
		return err
	}
	if !clientSecretRE.MatchString(req.ClientSecret) {
		return matrix.InvalidParam("client_secret must be 1 to 255 characters of [0-9a-zA-Z.=_-]")
	}
	if len(req.NextLink) > 2048 {
		return matrix.InvalidParam("next_link is too long")
	}
	address, err := NormalizeEmail(req.Email)
	if err != nil {
		return err
	}
	now := s.opts.Now().UTC()
	key := sha(req.ClientSecret, "email", address)
	// Who pays for a new mail: the address always; the account on v2; the
	// client's address on the anonymous v1 API.
	limitKeys := []ratelimit.Key{{Set: v.perAddress, Key: address}}
	if a := AccountFrom(c); a != nil {
		limitKeys = append(limitKeys, ratelimit.Key{Set: v.perAccount, Key: a.UserID})
	} else {
		limitKeys = append(limitKeys, ratelimit.Key{Set: v.perClient, Key: ratelimit.ClientKey(clientIP(c))})
	}
	undoLimits := func() {}
	var sid string
	sent := false
	err = s.db.Update(func(tx *store.Tx) error {
		var se *Session
		old, err := s.st.sessionKey(tx, key)
		if err != nil {
			return err
		}
		if old != "" {
			prev, err := s.sessionTx(tx, old, req.ClientSecret)
			if err == nil && !v.expired(prev, now) {
				se = prev
			} else if err != nil && !errors.Is(err, errNoSession) {
				return err
			}
		}
		if se != nil && attempt <= se.SendAttempt {
			sid = se.SID // a repeat: same session, nothing sent
			return nil
		}
		// A new mail: charged against the limits only now, so repeats are free.
		// (Update runs this function once; a failure below gives the tokens back.)
		undo, wait := ratelimit.Take(now, limitKeys...)
		if wait > 0 {
			s.opts.Log.Warn("validation mail refused by validation.rate_limits", "to", matrix.RedactEmail(address), "retry_after", wait.Round(time.Second))
			return matrix.LimitExceeded(ratelimit.Millis(wait))
		}
		undoLimits = undo
		if se == nil {
			se = &Session{SID: randomString(18), SecretHash: sha(req.ClientSecret), Medium: "email", Address: address, Created: now}
		}
		token := randomString(24)
		se.SendAttempt = attempt
		se.TokenHashes = append(se.TokenHashes, sha(token))
		if len(se.TokenHashes) > MaxTokensPerSession {
			se.TokenHashes = se.TokenHashes[len(se.TokenHashes)-MaxTokensPerSession:]
		}
		if req.NextLink != "" {
			se.NextLink = req.NextLink
		}
		se.Updated = now
		link := v.opts.BaseURL + "/_matrix/identity/v2/validate/email/submitToken?" + url.Values{
			"sid": {se.SID}, "client_secret": {req.ClientSecret}, "token": {token},
		}.Encode()
		msg, err := v.emailFor(c.QueryParam("brand")).Render(validationData(address, token, link, se.SID, v.opts.Brand))
		if err != nil {
			return matrix.EmailSendError("The validation email could not be prepared").Because(fmt.Errorf("rendering the validation email: %w", err))
		}
		msg.To = address
		msg.Ref = "session:" + se.SID
		id, err := v.opts.Mail.Enqueue(tx, msg)
		if err != nil {
			return matrix.EmailSendError("The validation email could not be sent").Because(fmt.Errorf("queueing the validation email to %s: %w", matrix.RedactEmail(address), err))
		}
		se.MailID = id
		if err := s.st.putSession(tx, se); err != nil {
			return err
		}
		sid, sent = se.SID, true
		return s.st.putSessionKey(tx, key, se.SID)
	})
	if err != nil {
		undoLimits()
		return err
	}
	if sent {
		v.opts.Mail.Wake()
	}
	return c.JSON(http.StatusOK, map[string]string{"sid": sid})
}

// submitToken validates sid with token and returns the session.
func (s *Service) submitToken(sid, clientSecret, token string) (*Session, error) {
	v, err := s.validator()
	if err != nil {
		return nil, err
	}
	if err := matrix.Require("sid", sid, "client_secret", clientSecret, "token", token); err != nil {
		return nil, err
	}
	now := s.opts.Now().UTC()
	var se *Session
	err = s.db.Update(func(tx *store.Tx) error {
		var err error
		if se, err = s.sessionTx(tx, sid, clientSecret); err != nil {
			return err
		}
		if v.expired(se, now) {
			return errExpired
		}
		th := sha(strings.TrimSpace(token))
		ok := 0
		for _, h := range se.TokenHashes {
			ok |= subtle.ConstantTimeCompare(h, th)
		}
		if ok != 1 {
			return errBadToken
		}
		if se.Validated.IsZero() {
			se.Validated = now
		}
		se.Updated = now
		return s.st.putSession(tx, se)
	})
	return se, err
}

// SubmitEmailToken serves POST /validate/email/submitToken.
func (s *Service) SubmitEmailToken(c echo.Context) error {
	var req struct {
		SID          string `json:"sid"`
		ClientSecret string `json:"client_secret"`
		Token        string `json:"token"`
	}
	if err := decodeBody(c, &req); err != nil {
		return err
	}
	if _, err := s.submitToken(req.SID, req.ClientSecret, req.Token); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]bool{"success": true})
}

// SubmitEmailTokenLink serves GET /validate/email/submitToken, the link in
// the email: a small page saying what happened, or a redirect to next_link
// when one was given and it is an http(s) URL.
func (s *Service) SubmitEmailTokenLink(c echo.Context) error {
	v, err := s.validator()
	if err != nil {
		return err
	}
	q := c.QueryParams()
	se, err := s.submitToken(q.Get("sid"), q.Get("client_secret"), q.Get("token"))
	if err != nil {
		me, ok := matrix.AsError(err)
		if !ok || me.Status >= 500 {
			return err
		}
		reason := "This confirmation link is not valid."
		switch me.Code {
		case "M_SESSION_EXPIRED":
			reason = "This confirmation link has expired. Ask your Matrix client to send a new email."
		case "M_TOKEN_INCORRECT":
			reason = "This confirmation link is not the latest one, or it was copied incompletely."
		case "M_MISSING_PARAMS":
			reason = "This confirmation link is incomplete: copy the whole link from the email."
		case "M_NO_VALID_SESSION":
			reason = "This confirmation link does not match any pending confirmation."
		}
		return v.renderPage(c, me.Status, pageData{Brand: v.opts.Brand, Reason: reason})
	}
	if se.NextLink != "" && isHTTPURL(se.NextLink) {
		return c.Redirect(http.StatusFound, se.NextLink)
	}
	return v.renderPage(c, http.StatusOK, pageData{Brand: v.opts.Brand, Success: true})
}

func isHTTPURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

func (v *validation) renderPage(c echo.Context, status int, d pageData) error {
	var b bytes.Buffer
	if err := v.page.Execute(&b, d); err != nil {
		return err
	}
	h := c.Response().Header()
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	return c.HTMLBlob(status, b.Bytes())
}

// GetValidated3pid serves GET /3pid/getValidated3pid.
func (s *Service) GetValidated3pid(c echo.Context) error {
	q := c.QueryParams()
	if err := matrix.Require("sid", q.Get("sid"), "client_secret", q.Get("client_secret")); err != nil {
		return err
	}
	se, err := s.ValidatedSession(q.Get("sid"), q.Get("client_secret"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"medium": se.Medium, "address": se.Address, "validated_at": se.Validated.UnixMilli()})
}
