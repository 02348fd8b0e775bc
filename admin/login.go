package admin

import (
	"crypto/subtle"
	"fmt"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"
)

type loginData struct {
	Token    string
	Next     string
	Username string
	Error    string
	NoAdmin  bool // no account exists yet: say how to make one
}

// loginPage serves GET /admin/login.
func (h *Handler) loginPage(c echo.Context) error {
	next := safeBack(c.QueryParam("next"), Prefix)
	if _, _, ok := h.sessionFrom(c); ok {
		return c.Redirect(http.StatusSeeOther, next)
	}
	return h.showLogin(c, http.StatusOK, loginData{Next: next})
}

func (h *Handler) showLogin(c echo.Context, status int, d loginData) error {
	h.importHandovers()
	if !h.hasAccount() {
		d.NoAdmin = true
	}
	d.Token = randomID()
	h.setCookie(c, loginCookie, d.Token, Prefix+"/login", 3600)
	return h.render(c, status, "login", "Log in", "", d)
}

// The longest login form fields accepted. Whatever an unauthenticated
// client sends is refused beyond these before it is checked, stored or
// logged (a failed login's username goes to the audit log).
const (
	MaxUsernameBytes = 256
	maxPasswordBytes = 1024
	maxNextBytes     = 2048
)

// login serves POST /admin/login.
func (h *Handler) login(c echo.Context) error {
	user := strings.TrimSpace(c.FormValue("username"))
	pass := c.FormValue("password")
	next := c.FormValue("next")
	if len(user) > MaxUsernameBytes || len(pass) > maxPasswordBytes || len(next) > maxNextBytes {
		h.refused(refusedTooLong)
		return h.showLogin(c, http.StatusBadRequest, loginData{Next: Prefix,
			Error: fmt.Sprintf("The username (at most %d bytes) or the password is too long.", MaxUsernameBytes)})
	}
	d := loginData{Next: safeBack(next, Prefix), Username: user}
	ck, err := c.Cookie(loginCookie)
	if err != nil || ck.Value == "" || subtle.ConstantTimeCompare([]byte(ck.Value), []byte(c.FormValue(csrfField))) != 1 {
		return errStatus(http.StatusForbidden, "The login form expired (CSRF token missing or wrong). Go back, reload and try again.")
	}
	h.importHandovers()
	ip := clientIP(c)
	if !h.limiter.allow(user, ip, h.opts.Now()) {
		// Counted, not written one by one: a flood of refused attempts
		// makes one audit entry a minute (audit.go).
		h.refused(refusedRateLimited)
		d.Error = "Too many login attempts. Wait a minute and try again."
		return h.showLogin(c, http.StatusTooManyRequests, d)
	}
	if user == "" || pass == "" || !h.checkLogin(user, pass) {
		h.audit(user, "login", "", "wrong username or password", false)
		d.Error = "Wrong username or password."
		return h.showLogin(c, http.StatusUnauthorized, d)
	}
	if err := h.startSession(c, user); err != nil {
		return err
	}
	h.limiter.succeeded(user, ip)
	h.setCookie(c, loginCookie, "", Prefix+"/login", -1)
	h.audit(user, "login", "", "", true)
	return c.Redirect(http.StatusSeeOther, d.Next)
}

// logout serves POST /admin/logout.
func (h *Handler) logout(c echo.Context) error {
	sid, _ := c.Get(ctxSession).(string)
	h.endSession(c, sid)
	h.audit(who(c), "logout", "", "", true)
	return c.Redirect(http.StatusSeeOther, Prefix+"/login?ok=loggedout")
}
