package admin

import (
	"crypto/subtle"
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

// login serves POST /admin/login.
func (h *Handler) login(c echo.Context) error {
	user := strings.TrimSpace(c.FormValue("username"))
	pass := c.FormValue("password")
	d := loginData{Next: safeBack(c.FormValue("next"), Prefix), Username: user}
	ck, err := c.Cookie(loginCookie)
	if err != nil || ck.Value == "" || subtle.ConstantTimeCompare([]byte(ck.Value), []byte(c.FormValue(csrfField))) != 1 {
		return errStatus(http.StatusForbidden, "The login form expired (CSRF token missing or wrong). Go back, reload and try again.")
	}
	h.importHandovers()
	if !h.limiter.allow(user, clientIP(c.Request()), h.opts.Now()) {
		h.audit(user, "login", "", "rate limited", false)
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
