package admin

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/herald-im/herald/store"
)

const (
	sessionCookie = "herald_admin"
	loginCookie   = "herald_admin_login" // double-submit CSRF token of the login form
	ctxUser       = "admin.user"
	ctxSession    = "admin.session"
	csrfField     = "csrf"
	csrfHeader    = "X-CSRF-Token"
)

func randomID() string {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func (h *Handler) mac(purpose, v string) string {
	m := hmac.New(sha256.New, h.key)
	m.Write([]byte(purpose))
	m.Write([]byte{0})
	m.Write([]byte(v))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// csrfToken is bound to the session: HMAC(key, "csrf", session id).
func (h *Handler) csrfToken(sid string) string { return h.mac("csrf", sid) }

func secure(c echo.Context) bool {
	return c.Request().TLS != nil || strings.EqualFold(c.Request().Header.Get("X-Forwarded-Proto"), "https")
}

func (h *Handler) setCookie(c echo.Context, name, value, path string, maxAge int) {
	c.SetCookie(&http.Cookie{Name: name, Value: value, Path: path, MaxAge: maxAge, HttpOnly: true,
		Secure: secure(c), SameSite: http.SameSiteStrictMode})
}

// startSession stores a session and sets its signed cookie.
func (h *Handler) startSession(c echo.Context, user string) error {
	sid := randomID()
	now := h.opts.Now().UTC()
	s := session{User: user, Created: now, Expires: now.Add(h.lifetime)}
	st := storeFor(h.opts.DB)
	if err := h.opts.DB.Update(func(tx *store.Tx) error {
		return st.putSession(tx, sid, s, now) // forgets expired sessions while there
	}); err != nil {
		return err
	}
	h.setCookie(c, sessionCookie, sid+"."+h.mac("session", sid), Prefix, int(h.lifetime.Seconds()))
	return nil
}

// sessionFrom checks the cookie's signature, then the stored session.
func (h *Handler) sessionFrom(c echo.Context) (sid, user string, ok bool) {
	ck, err := c.Cookie(sessionCookie)
	if err != nil {
		return "", "", false
	}
	sid, sig, found := strings.Cut(ck.Value, ".")
	if !found || subtle.ConstantTimeCompare([]byte(sig), []byte(h.mac("session", sid))) != 1 {
		return "", "", false
	}
	var s session
	st := storeFor(h.opts.DB)
	err = h.opts.DB.View(func(tx *store.Tx) error {
		var found bool
		var err error
		if s, found, err = st.getSession(tx, sid); err == nil && !found {
			err = ErrNotFound
		}
		return err
	})
	if err != nil || !h.opts.Now().Before(s.Expires) || !h.userExists(s.User) {
		return "", "", false
	}
	return sid, s.User, true
}

func (h *Handler) endSession(c echo.Context, sid string) {
	st := storeFor(h.opts.DB)
	_ = h.opts.DB.Update(func(tx *store.Tx) error { return st.deleteSession(tx, sid) })
	h.setCookie(c, sessionCookie, "", Prefix, -1)
}

func (h *Handler) userExists(name string) bool {
	if _, ok := h.cfgUsers[name]; ok {
		return true
	}
	_, ok := storedHash(h.opts.DB, name)
	return ok
}

// checkLogin verifies a username and password against config users, then
// stored ones. Unknown names cost one hash too.
func (h *Handler) checkLogin(user, password string) bool {
	hash, ok := h.cfgUsers[user]
	if !ok {
		hash, ok = storedHash(h.opts.DB, user)
	}
	if !ok {
		VerifyPassword(dummyHash(), password)
		return false
	}
	return VerifyPassword(hash, password)
}

// requireSession lets a logged-in admin through and checks the CSRF token of
// every state-changing request; others go to the login page.
func (h *Handler) requireSession(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		sid, user, ok := h.sessionFrom(c)
		if !ok {
			if c.Request().Method == http.MethodGet || c.Request().Method == http.MethodHead {
				return c.Redirect(http.StatusSeeOther, Prefix+"/login?next="+urlQueryEscape(c.Request().URL.RequestURI()))
			}
			return c.Redirect(http.StatusSeeOther, Prefix+"/login")
		}
		if !safeMethod(c.Request().Method) {
			if !h.validCSRF(sid, c.FormValue(csrfField)) {
				return errStatus(http.StatusForbidden, "The form expired or did not come from this console (CSRF token missing or wrong). Go back, reload and try again.")
			}
		}
		c.Set(ctxUser, user)
		c.Set(ctxSession, sid)
		return next(c)
	}
}

// requireAPI accepts an admin API token (Authorization: Bearer) or a console
// session; with a session, state-changing calls need the X-CSRF-Token header.
func (h *Handler) requireAPI(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if auth := c.Request().Header.Get("Authorization"); auth != "" {
			tok, ok := strings.CutPrefix(auth, "Bearer ")
			i := -1
			if ok {
				i = constantTimeIn([]byte(strings.TrimSpace(tok)), h.apiTokens)
			}
			if i < 0 {
				c.Response().Header().Set("WWW-Authenticate", `Bearer realm="herald-admin"`)
				return errStatus(http.StatusUnauthorized, "Unknown admin API token")
			}
			c.Set(ctxUser, "api-token-"+strconv.Itoa(i+1))
			return next(c)
		}
		sid, user, ok := h.sessionFrom(c)
		if !ok {
			c.Response().Header().Set("WWW-Authenticate", `Bearer realm="herald-admin"`)
			return errStatus(http.StatusUnauthorized, "Log in or send an admin API token")
		}
		if !safeMethod(c.Request().Method) && !h.validCSRF(sid, c.Request().Header.Get(csrfHeader)) {
			return errStatus(http.StatusForbidden, "Missing or wrong X-CSRF-Token header")
		}
		c.Set(ctxUser, user)
		c.Set(ctxSession, sid)
		return next(c)
	}
}

func (h *Handler) validCSRF(sid, got string) bool {
	want := h.csrfToken(sid)
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

func who(c echo.Context) string {
	u, _ := c.Get(ctxUser).(string)
	return u
}

type clientIPKey struct{}

// WithClientIP returns r carrying the client address the embedding server
// determined (its Echo's RealIP, which knows the trusted proxies); the
// console limits logins by it. Without it the console uses its own
// IPExtractor (Options.IPExtractor, by default the TCP peer).
func WithClientIP(r *http.Request, ip string) *http.Request {
	if ip == "" {
		return r
	}
	return r.WithContext(context.WithValue(r.Context(), clientIPKey{}, ip))
}

// clientIP is the address a request came from, for the login limits.
func clientIP(c echo.Context) string {
	if ip, ok := c.Request().Context().Value(clientIPKey{}).(string); ok {
		return ip
	}
	return c.RealIP()
}
