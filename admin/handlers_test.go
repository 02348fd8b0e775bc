package admin_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/admin"
	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/queue"
)

// concrete turns a route pattern into a path that reaches its handler.
func concrete(p string) string {
	p = strings.ReplaceAll(p, ":id", "inv-dana")
	return strings.ReplaceAll(p, "*", "x")
}

func routes(t *testing.T, e *env) []struct{ method, path string } {
	var out []struct{ method, path string }
	for _, r := range e.h.Routes() {
		if r.Method != http.MethodGet && r.Method != http.MethodPost {
			continue // echo's internal not-found routes
		}
		if strings.HasPrefix(r.Path, "/admin/static") || r.Path == "/admin/login" {
			continue
		}
		out = append(out, struct{ method, path string }{r.Method, concrete(r.Path)})
	}
	if len(out) < 50 {
		t.Fatalf("only %d routes found", len(out))
	}
	return out
}

func TestEveryRouteNeedsLogin(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	for _, r := range routes(t, e) {
		var res *http.Response
		if r.method == http.MethodGet {
			res, _ = c.get(r.path)
		} else {
			res, _ = c.post(r.path, url.Values{"csrf": {"anything"}, "id": {"x"}, "address": {"a@b.c"}})
		}
		if strings.HasPrefix(r.path, "/admin/api/") {
			if res.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s %s without login: %d, want 401", r.method, r.path, res.StatusCode)
			}
			// A wrong token is no better.
			res, _ = c.api(r.method, r.path, "wrong-token", "")
			if res.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s %s with a wrong token: %d, want 401", r.method, r.path, res.StatusCode)
			}
			continue
		}
		loc := res.Header.Get("Location")
		if res.StatusCode != http.StatusSeeOther || !strings.HasPrefix(loc, "/admin/login") {
			t.Errorf("%s %s without login: %d %q, want a redirect to the login page", r.method, r.path, res.StatusCode, loc)
		}
	}
	// Nothing changed.
	if len(e.inv.calls) != 0 {
		t.Fatalf("actions ran without login: %v", e.inv.calls)
	}
	if len(e.ring.List()) != 1 {
		t.Fatal("a key was rotated without login")
	}
}

func TestEveryPostNeedsCSRF(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	if res := c.login(testUser, testPassword); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("login: %d", res.StatusCode)
	}
	for _, r := range routes(t, e) {
		if r.method != http.MethodPost {
			continue
		}
		if strings.HasPrefix(r.path, "/admin/api/") {
			res, _ := c.api(r.method, r.path, "", `{}`) // session cookie, no X-CSRF-Token
			if res.StatusCode != http.StatusForbidden {
				t.Errorf("API %s with a session and no CSRF header: %d, want 403", r.path, res.StatusCode)
			}
			continue
		}
		for _, tok := range []string{"", "wrong", c.csrf + "x"} {
			res, body := c.post(r.path, url.Values{"csrf": {tok}, "id": {"x"}})
			if res.StatusCode != http.StatusForbidden || !strings.Contains(body, "CSRF") {
				t.Errorf("POST %s with csrf %q: %d, want 403", r.path, tok, res.StatusCode)
			}
		}
	}
	if len(e.inv.calls) != 0 || len(e.ring.List()) != 1 {
		t.Fatal("an action ran without its CSRF token")
	}
	// The session still works, and its token works.
	res, _ := c.postCSRF("/admin/invites/inv-dana/revoke", nil)
	if res.StatusCode != http.StatusSeeOther {
		t.Fatalf("revoke with the token: %d", res.StatusCode)
	}
	// An API call with the session and the header works too.
	req, _ := http.NewRequest(http.MethodPost, c.base+"/admin/api/keys/rotate", nil)
	req.Header.Set("X-CSRF-Token", c.csrf)
	if res, body := c.do(req); res.StatusCode != http.StatusOK {
		t.Fatalf("API rotate with session and CSRF header: %d %s", res.StatusCode, body)
	}
}

func TestLoginLogout(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	res, _ := c.get("/admin/invites?state=failed")
	if loc := res.Header.Get("Location"); loc != "/admin/login?next=%2Fadmin%2Finvites%3Fstate%3Dfailed" {
		t.Fatalf("redirect to %q", loc)
	}
	if res := c.login(testUser, "wrong password!"); res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong password: %d", res.StatusCode)
	}
	if res := c.login("nobody", testPassword); res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("unknown user: %d", res.StatusCode)
	}
	// The login form itself needs its token.
	res, _ = c.post("/admin/login", url.Values{"username": {testUser}, "password": {testPassword}})
	if res.StatusCode != http.StatusForbidden {
		t.Fatalf("login without csrf: %d", res.StatusCode)
	}
	res = c.login(testUser, testPassword)
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/admin" {
		t.Fatalf("login: %d %q", res.StatusCode, res.Header.Get("Location"))
	}
	var ck *http.Cookie
	for _, k := range res.Cookies() {
		if k.Name == "herald_admin" {
			ck = k
		}
	}
	if ck == nil || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Secure || ck.Path != "/admin" || ck.MaxAge != int((12*time.Hour).Seconds()) {
		t.Fatalf("session cookie %+v", ck)
	}
	res, body := c.get("/admin")
	if res.StatusCode != http.StatusOK || !strings.Contains(body, "Dashboard") || !strings.Contains(body, testUser) {
		t.Fatalf("dashboard after login: %d", res.StatusCode)
	}
	// A tampered cookie is refused.
	u, _ := url.Parse(c.base + "/admin")
	good := c.hc.Jar.Cookies(u)[0]
	bad := e.client()
	bad.hc.Jar.SetCookies(u, []*http.Cookie{{Name: "herald_admin", Value: good.Value[:len(good.Value)-2] + "AA", Path: "/admin"}})
	if res, _ := bad.get("/admin"); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("tampered cookie: %d", res.StatusCode)
	}
	// Logout ends the session on the server: the old cookie no longer works.
	res, _ = c.postCSRF("/admin/logout", nil)
	if res.StatusCode != http.StatusSeeOther || !strings.HasPrefix(res.Header.Get("Location"), "/admin/login") {
		t.Fatalf("logout: %d", res.StatusCode)
	}
	replay := e.client()
	replay.hc.Jar.SetCookies(u, []*http.Cookie{{Name: "herald_admin", Value: good.Value, Path: "/admin"}})
	if res, _ := replay.get("/admin"); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("cookie after logout: %d", res.StatusCode)
	}
	// The audit log has it all.
	es, _ := e.h.Audit(100, 0)
	var actions []string
	for _, a := range es {
		actions = append(actions, a.Action+":"+a.Who+":"+map[bool]string{true: "ok", false: "fail"}[a.OK])
	}
	got := strings.Join(actions, " ")
	for _, want := range []string{"logout:root:ok", "login:root:ok", "login:nobody:fail", "login:root:fail"} {
		if !strings.Contains(got, want) {
			t.Errorf("audit log %q lacks %q", got, want)
		}
	}
}

func TestSessionExpires(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	c.login(testUser, testPassword)
	if res, _ := c.get("/admin/keys"); res.StatusCode != http.StatusOK {
		t.Fatalf("keys: %d", res.StatusCode)
	}
	e.clock.advance(12*time.Hour + time.Second)
	if res, _ := c.get("/admin/keys"); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("after the session lifetime: %d", res.StatusCode)
	}
}

func TestSecureCookieBehindTLS(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	req, _ := http.NewRequest(http.MethodGet, c.base+"/admin/login", nil)
	req.Header.Set("X-Forwarded-Proto", "https")
	res, _ := c.do(req)
	if ck := res.Cookies(); len(ck) != 1 || !ck[0].Secure || !ck[0].HttpOnly || ck[0].SameSite != http.SameSiteStrictMode {
		t.Fatalf("cookies over TLS: %+v", ck)
	}
}

func TestLoginRateLimited(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	codes := []int{}
	for i := 0; i < 7; i++ {
		codes = append(codes, c.login(testUser, "not the password").StatusCode)
	}
	if codes[0] != http.StatusUnauthorized || codes[6] != http.StatusTooManyRequests {
		t.Fatalf("codes %v: want 401s then 429", codes)
	}
	// Even the right password is refused while limited.
	if res := c.login(testUser, testPassword); res.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("right password while limited: %d", res.StatusCode)
	}
	// Another name from the same address still gets through for a while.
	if err := admin.CreateUser(e.db, "second", testPassword, false, time.Now()); err != nil {
		t.Fatal(err)
	}
	if res := c.login("second", testPassword); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("another user: %d", res.StatusCode)
	}
}

func TestConfigUser(t *testing.T) {
	hash, err := admin.HashPassword("config user password")
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(o *admin.Options) {
		o.Config.Admin.Users = []config.AdminUser{{Username: "ops", PasswordHash: config.Secret(hash)}}
	})
	c := e.client()
	if res := c.login("ops", "config user password"); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("config user login: %d", res.StatusCode)
	}
	_, err = admin.New(admin.Options{DB: e.db, Config: &config.Config{Admin: config.Admin{Users: []config.AdminUser{{Username: "x", PasswordHash: "plaintext"}}}}})
	if err == nil || !strings.Contains(err.Error(), "admin.users[0].password_hash") {
		t.Fatalf("bad hash in config: %v", err)
	}
}

func TestPasswordHash(t *testing.T) {
	h, err := admin.HashPassword("a long enough password")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("hash %q", h)
	}
	if !admin.VerifyPassword(h, "a long enough password") || admin.VerifyPassword(h, "a long enough passworD") {
		t.Fatal("verify")
	}
	h2, _ := admin.HashPassword("a long enough password")
	if h == h2 {
		t.Fatal("no salt")
	}
	if _, err := admin.HashPassword("short"); err == nil {
		t.Fatal("short password accepted")
	}
	for _, bad := range []string{"", "plain", "$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", h[:len(h)-30], strings.Replace(h, "m=19456", "m=99999999", 1)} {
		if admin.CheckHash(bad) == nil || admin.VerifyPassword(bad, "a long enough password") {
			t.Errorf("bad hash %q accepted", bad)
		}
	}
}

func TestPages(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	c.login(testUser, testPassword)
	for _, p := range []struct{ path, want string }{
		{"/admin", "Invites per day"},
		{"/admin/", "emails failed"},
		{"/admin/invites", "dana.katz@example.net"},
		{"/admin/invites?state=failed", "walter@example.net"},
		{"/admin/invites?room=%23xfiles:example.org", "fox.mulder@example.net"},
		{"/admin/invites?sender=%40dana:example.org", "fox.mulder@example.net"},
		{"/admin/invites?homeserver=matrix.example.com&state=failed", "walter@example.net"},
		{"/admin/invites?q=+Dana.Katz@EXAMPLE.net+", "dana.katz@example.net"},
		{"/admin/invites?page=2", "Page 2"},
		{"/admin/invites/inv-fox", "connection refused"},
		{"/admin/invites/inv-fox", "421 4.7.0 mx.example.net"},
		{"/admin/invites/inv-fox", "org.matrix.web_client_location"},
		{"/admin/outbox", "Last reply"},
		{"/admin/outbox?state=failed", "550 5.7.1 Message rejected as spam"},
		{"/admin/outbox/1", "250 2.0.0 Ok"},
		{"/admin/deliveries", "hs.unreachable.example"},
		{"/admin/deliveries/d-stuck", "403 M_FORBIDDEN: Unknown room"},
		{"/admin/bindings", "Look up"},
		{"/admin/bindings?address=Fox.Mulder@example.NET", "@fox:matrix.example.com"},
		{"/admin/bindings/erase?address=fox.mulder@example.net", "Type the address again"},
		{"/admin/keys", e.ring.Current().ID},
		{"/admin/settings", "admin.session_lifetime"},
		{"/admin/audit", "login"},
		{"/admin/mailbox", "Alice invited you to Project Apollo"},
		{"/admin/mailbox/m1", `<iframe class="mail" sandbox src="/admin/mailbox/m1/html"`},
	} {
		res, body := c.get(p.path)
		if res.StatusCode != http.StatusOK || !strings.Contains(body, p.want) {
			t.Errorf("GET %s: %d, want 200 containing %q", p.path, res.StatusCode, p.want)
		}
		if !strings.Contains(body, `<meta name="viewport"`) || !strings.Contains(body, "/admin/static/admin.css") {
			t.Errorf("GET %s: not the layout", p.path)
		}
	}
	// Newest first, and times as <time datetime> in UTC.
	_, body := c.get("/admin/invites")
	if strings.Index(body, "dana.katz@example.net") > strings.Index(body, "fox.mulder@example.net") && strings.Contains(body, "fox.mulder@example.net") {
		t.Error("invites not newest first")
	}
	if !strings.Contains(body, `<time datetime="`) || !strings.Contains(body, `Z">`) {
		t.Error("no <time datetime> in UTC")
	}
	// Bad input is answered with the reason, not a crash.
	for _, p := range []string{"/admin/invites?since=yesterday", "/admin/invites?q=not-an-address%40"} {
		if res, _ := c.get(p); res.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %d", p, res.StatusCode)
		}
	}
	for p, want := range map[string]int{"/admin/invites/nope": 404, "/admin/outbox/999": 404, "/admin/deliveries/nope": 404, "/admin/mailbox/nope": 404, "/admin/nope": 404, "/admin/outbox?state=weird": 400} {
		if res, _ := c.get(p); res.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", p, res.StatusCode, want)
		}
	}
	// Static files and the mail frame's own sandbox.
	if res, body := c.get("/admin/static/admin.css"); res.StatusCode != 200 || !strings.Contains(res.Header.Get("Content-Type"), "text/css") || !strings.Contains(body, "@media") {
		t.Errorf("stylesheet: %d", res.StatusCode)
	}
	res, _ := c.get("/admin/mailbox/m1/html")
	if csp := res.Header.Get("Content-Security-Policy"); res.StatusCode != 200 || !strings.HasPrefix(csp, "sandbox") || !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("mail html: %d %q", res.StatusCode, res.Header.Get("Content-Security-Policy"))
	}
	res, _ = c.get("/admin")
	if csp := res.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || res.Header.Get("X-Frame-Options") != "DENY" {
		t.Errorf("CSP %q", csp)
	}
}

func TestSettingsMaskSecrets(t *testing.T) {
	hash, err := admin.HashPassword("config user password")
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(o *admin.Options) {
		o.Config.Admin.Users = []config.AdminUser{{Username: "ops", PasswordHash: config.Secret(hash)}}
	})
	c := e.client()
	c.login(testUser, testPassword)
	_, body := c.get("/admin/settings")
	_, api := c.api("GET", "/admin/api/settings", testToken, "")
	salt := strings.Split(hash, "$")[4]
	for _, b := range []string{body, api} {
		if strings.Contains(b, "smtp-hunter2") || strings.Contains(b, testToken) || strings.Contains(b, salt) || strings.Contains(b, "argon2id") {
			t.Fatal("a secret is shown")
		}
		for _, key := range []string{"smtp.password", "admin.api_tokens[0]", "admin.users[0].password_hash"} {
			if !regexp.MustCompile(regexp.QuoteMeta(key) + `(</code></td><td data-label="Value"><code>|","value":")\*{8}[<"]`).MatchString(b) {
				i := strings.Index(b, key)
				t.Errorf("%s not masked: %.200s", key, b[max(i, 0):])
			}
		}
		if !strings.Contains(b, "smtp.username") || !strings.Contains(b, "ops") {
			t.Fatalf("settings lack plain rows: %s", b)
		}
	}
}

func TestInviteActions(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	c.login(testUser, testPassword)
	mails := len(e.out.mails)
	res, _ := c.postCSRF("/admin/invites/inv-dana/resend", nil)
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/admin/invites/inv-dana?ok=resent" || len(e.out.mails) != mails+1 {
		t.Fatalf("resend: %d %q", res.StatusCode, res.Header.Get("Location"))
	}
	_, body := c.get("/admin/invites/inv-dana?ok=resent")
	if !strings.Contains(body, "The invite email was queued again.") || !strings.Contains(body, "You have been invited (again)") {
		t.Fatal("resend not shown")
	}
	res, _ = c.postCSRF("/admin/invites/inv-dana/revoke", nil)
	if res.StatusCode != http.StatusSeeOther || e.inv.invites["inv-dana"].State != invites.StateRevoked {
		t.Fatalf("revoke: %d", res.StatusCode)
	}
	// Revoking again is refused with the reason; a resolved invite cannot be revoked.
	for _, id := range []string{"inv-dana", "inv-fox"} {
		res, body = c.postCSRF("/admin/invites/"+id+"/revoke", nil)
		if res.StatusCode != http.StatusConflict || !strings.Contains(body, "not possible") {
			t.Fatalf("revoke %s again: %d", id, res.StatusCode)
		}
	}
	if res, _ := c.postCSRF("/admin/invites/nope/revoke", nil); res.StatusCode != http.StatusNotFound {
		t.Fatalf("revoke unknown: %d", res.StatusCode)
	}
	es, _ := e.h.Audit(10, 0)
	if es[0].Action != "invite.revoke" || es[0].OK || es[len(es)-1].Action != "login" {
		t.Fatalf("audit %+v", es[0])
	}
	var okRevoke bool
	for _, a := range es {
		okRevoke = okRevoke || (a.Action == "invite.revoke" && a.OK && a.Target == "invite inv-dana" && a.Who == testUser)
	}
	if !okRevoke {
		t.Fatal("revoke not audited")
	}
}

func TestQueueActions(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	c.login(testUser, testPassword)
	var failedMail string
	for id, m := range e.out.mails {
		if m.State == "failed" && m.To == "walter@example.net" {
			failedMail = id
		}
	}
	res, _ := c.postCSRF("/admin/outbox/"+failedMail+"/retry", nil)
	if res.StatusCode != http.StatusSeeOther || e.out.mails[failedMail].State != "pending" {
		t.Fatalf("retry mail: %d", res.StatusCode)
	}
	// Retrying a sent mail is refused.
	if res, _ := c.postCSRF("/admin/outbox/1/retry", nil); res.StatusCode != http.StatusConflict {
		t.Fatalf("retry sent: %d", res.StatusCode)
	}
	// The list form: one row's button, then bulk.
	res, _ = c.postCSRF("/admin/outbox/bulk", url.Values{"drop": {failedMail}, "back": {"/admin/outbox?state=failed"}})
	if res.StatusCode != http.StatusSeeOther || e.out.mails[failedMail] != nil || res.Header.Get("Location") != "/admin/outbox?state=failed&ok=bulk" {
		t.Fatalf("row drop: %d %q", res.StatusCode, res.Header.Get("Location"))
	}
	n := len(e.out.mails)
	res, _ = c.postCSRF("/admin/outbox/bulk", url.Values{"bulk": {"drop"}, "ids": {"1", "2", "3"}})
	if res.StatusCode != http.StatusSeeOther || len(e.out.mails) != n-3 {
		t.Fatalf("bulk drop: %d, %d left of %d", res.StatusCode, len(e.out.mails), n)
	}
	if res, _ := c.postCSRF("/admin/outbox/bulk", url.Values{"bulk": {"drop"}}); res.StatusCode != http.StatusBadRequest {
		t.Fatalf("bulk with nothing selected: %d", res.StatusCode)
	}
	// An open redirect through "back" is refused.
	res, _ = c.postCSRF("/admin/outbox/4/retry", url.Values{"back": {"https://evil.example/"}})
	if loc := res.Header.Get("Location"); strings.Contains(loc, "evil") {
		t.Fatalf("redirected to %q", loc)
	}
	// Deliveries: retry from the invite page goes back there.
	res, _ = c.postCSRF("/admin/deliveries/d-stuck/retry", url.Values{"back": {"/admin/invites/inv001"}})
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/admin/invites/inv001?ok=retried" || e.dels.dels["d-stuck"].State != "pending" {
		t.Fatalf("retry delivery: %d %q", res.StatusCode, res.Header.Get("Location"))
	}
	res, _ = c.postCSRF("/admin/deliveries/bulk", url.Values{"bulk": {"retry"}, "ids": {"d-stuck", "d-fox"}})
	if res.StatusCode != http.StatusConflict { // d-fox was delivered: the first error is shown
		t.Fatalf("bulk retry: %d", res.StatusCode)
	}
	res, _ = c.postCSRF("/admin/deliveries/d-stuck/drop", nil)
	if res.StatusCode != http.StatusSeeOther || e.dels.dels["d-stuck"] != nil || res.Header.Get("Location") != "/admin/deliveries?ok=dropped" {
		t.Fatalf("drop delivery: %d %q", res.StatusCode, res.Header.Get("Location"))
	}
}

func TestBindingsAndErase(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	c.login(testUser, testPassword)
	res, _ := c.postCSRF("/admin/bindings/unbind", url.Values{"address": {"Fox.Mulder@example.net"}})
	if res.StatusCode != http.StatusSeeOther {
		t.Fatalf("unbind: %d", res.StatusCode)
	}
	if _, ok := e.binds.m["fox.mulder@example.net"]; ok {
		t.Fatal("still bound")
	}
	// Erase needs the address typed again.
	res, _ = c.postCSRF("/admin/bindings/erase", url.Values{"address": {"dana.katz@example.net"}, "confirm": {"dana@example.net"}})
	if res.StatusCode != http.StatusBadRequest || e.inv.invites["inv-dana"] == nil {
		t.Fatalf("erase without confirmation: %d", res.StatusCode)
	}
	res, _ = c.postCSRF("/admin/bindings/erase", url.Values{"address": {"dana.katz@example.net"}, "confirm": {" Dana.Katz@example.net"}})
	if res.StatusCode != http.StatusSeeOther || e.inv.invites["inv-dana"] != nil {
		t.Fatalf("erase: %d", res.StatusCode)
	}
	for _, m := range e.out.mails {
		if m.To == "dana.katz@example.net" {
			t.Fatal("mail history kept")
		}
	}
	// The audit log does not keep the erased address.
	es, _ := e.h.Audit(5, 0)
	if es[0].Action != "address.erase" || es[0].Target != "d...@e..." {
		t.Fatalf("audit %+v", es[0])
	}
	_, body := c.get("/admin/audit")
	if strings.Contains(body, "dana.katz") {
		t.Fatal("erased address in the audit page")
	}
}

func TestKeyActions(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	c.login(testUser, testPassword)
	first := e.ring.Current().ID
	res, _ := c.postCSRF("/admin/keys/rotate", nil)
	if res.StatusCode != http.StatusSeeOther || e.ring.Current().ID == first {
		t.Fatalf("rotate: %d", res.StatusCode)
	}
	second := e.ring.Current().ID
	if res, _ := c.postCSRF("/admin/keys/retire", url.Values{"id": {second}}); res.StatusCode != http.StatusConflict {
		t.Fatalf("retire current: %d", res.StatusCode)
	}
	if res, _ := c.postCSRF("/admin/keys/retire", url.Values{"id": {"ed25519:nope"}}); res.StatusCode != http.StatusNotFound {
		t.Fatalf("retire unknown: %d", res.StatusCode)
	}
	res, _ = c.postCSRF("/admin/keys/retire", url.Values{"id": {first}})
	if k, _ := e.ring.Get(first); res.StatusCode != http.StatusSeeOther || k.Valid() {
		t.Fatalf("retire: %d", res.StatusCode)
	}
	_, body := c.get("/admin/keys?ok=retired")
	if !strings.Contains(body, "retired") || !strings.Contains(body, "no longer published") {
		t.Fatal("keys page")
	}
}

func TestAPI(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	get := func(path string, v any) {
		t.Helper()
		res, body := c.api("GET", path, testToken, "")
		if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
			t.Fatalf("GET %s: %d %s", path, res.StatusCode, body)
		}
		if err := json.Unmarshal([]byte(body), v); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
	}
	post := func(path, body string, want int) string {
		t.Helper()
		res, b := c.api("POST", path, testToken, body)
		if res.StatusCode != want {
			t.Fatalf("POST %s: %d %s, want %d", path, res.StatusCode, b, want)
		}
		return b
	}
	var dash struct {
		Invites []struct {
			State string `json:"state"`
			Count int    `json:"count"`
		} `json:"invites"`
		Outbox      queue.StatsView    `json:"outbox"`
		Failures24h int                `json:"failures_24h"`
		PerDay      []invites.DayCount `json:"per_day"`
	}
	get("/admin/api/dashboard", &dash)
	if len(dash.Invites) != 7 || len(dash.PerDay) != 30 || dash.Outbox.Failed == 0 || dash.Failures24h == 0 {
		t.Fatalf("dashboard %+v", dash)
	}
	var list struct {
		Invites []invites.View `json:"invites"`
		More    bool           `json:"more"`
	}
	get("/admin/api/invites?q=DANA.katz@example.net", &list)
	if len(list.Invites) != 1 || list.Invites[0].ID != "inv-dana" {
		t.Fatalf("search %+v", list)
	}
	// Dates are whole UTC days: since includes its day, until includes its day.
	today := time.Now().UTC().Format("2006-01-02")
	get("/admin/api/invites?since="+today, &list)
	if len(list.Invites) == 0 {
		t.Fatal("nothing created today")
	}
	for _, i := range list.Invites {
		if i.Created.UTC().Format("2006-01-02") != today {
			t.Fatalf("since=%s gave an invite of %v", today, i.Created)
		}
	}
	yesterday := time.Now().UTC().Add(-24 * time.Hour).Format("2006-01-02")
	get("/admin/api/invites?until="+yesterday+"&state=resolved", &list)
	if len(list.Invites) == 0 {
		t.Fatal("nothing resolved before today")
	}
	for _, i := range list.Invites {
		if i.Created.UTC().Format("2006-01-02") > yesterday || i.State != invites.StateResolved {
			t.Fatalf("until=%s&state=resolved gave %s of %v", yesterday, i.State, i.Created)
		}
	}
	get("/admin/api/invites", &list)
	if len(list.Invites) != 50 || !list.More {
		t.Fatalf("page 1: %d more=%v", len(list.Invites), list.More)
	}
	var inv struct {
		Invite   invites.View    `json:"invite"`
		Timeline []invites.Event `json:"timeline"`
	}
	get("/admin/api/invites/inv-fox", &inv)
	if inv.Invite.ID != "inv-fox" || len(inv.Timeline) != 3+1+2+1+3 {
		t.Fatalf("invite timeline has %d events", len(inv.Timeline))
	}
	for i := 1; i < len(inv.Timeline); i++ {
		if inv.Timeline[i].At.Before(inv.Timeline[i-1].At) {
			t.Fatal("timeline not in order")
		}
	}
	post("/admin/api/invites/inv-dana/resend", "", 200)
	post("/admin/api/invites/inv-dana/revoke", "", 200)
	post("/admin/api/invites/inv-dana/revoke", "", 409)
	post("/admin/api/invites/none/revoke", "", 404)
	var q struct {
		Items []mailer.View `json:"items"`
	}
	get("/admin/api/outbox?state=failed", &q)
	if len(q.Items) == 0 {
		t.Fatal("no failed mail")
	}
	post("/admin/api/outbox/"+q.Items[0].ID+"/retry", "", 200)
	if b := post("/admin/api/outbox/bulk", `{"action":"drop","ids":["1","2","nope"]}`, 200); !strings.Contains(b, `"done":2`) {
		t.Fatalf("bulk: %s", b)
	}
	post("/admin/api/outbox/bulk", `{"action":"explode","ids":["3"]}`, 400)
	post("/admin/api/outbox/bulk", `{"action":`, 400)
	var m mailer.View
	get("/admin/api/outbox/4", &m)
	post("/admin/api/outbox/4/drop", "", 200)
	var dl invites.DeliveryView
	get("/admin/api/deliveries/d-stuck", &dl)
	get("/admin/api/deliveries?state=failed", &q)
	post("/admin/api/deliveries/d-stuck/retry", "", 200)
	post("/admin/api/deliveries/bulk", `{"action":"drop","ids":["d-stuck"]}`, 200)
	post("/admin/api/deliveries/d-fox/drop", "", 200)
	var b struct {
		Binding *identity.BindingView `json:"binding"`
	}
	get("/admin/api/bindings?address=Fox.Mulder@example.net", &b)
	if b.Binding == nil || b.Binding.MXID != "@fox:matrix.example.com" {
		t.Fatalf("binding %+v", b)
	}
	post("/admin/api/bindings/unbind", `{"address":"fox.mulder@example.net"}`, 200)
	post("/admin/api/bindings/erase", `{"address":"fox.mulder@example.net","confirm":"nope@example.net"}`, 400)
	if r := post("/admin/api/bindings/erase", `{"address":"fox.mulder@example.net","confirm":"fox.mulder@example.net"}`, 200); !strings.Contains(r, `"invites":1`) {
		t.Fatalf("erase: %s", r)
	}
	var ks struct {
		Keys []struct {
			ID      string `json:"id"`
			Current bool   `json:"current"`
		} `json:"keys"`
	}
	get("/admin/api/keys", &ks)
	old := ks.Keys[0].ID
	post("/admin/api/keys/rotate", "", 200)
	post("/admin/api/keys/retire", `{"id":"`+old+`"}`, 200)
	var st struct {
		Settings []struct{ Key, Value string } `json:"settings"`
	}
	get("/admin/api/settings", &st)
	var au struct {
		Entries []admin.AuditEntry `json:"entries"`
	}
	get("/admin/api/audit", &au)
	if au.Entries[0].Action != "key.retire" || au.Entries[0].Who != "api-token-1" {
		t.Fatalf("audit %+v", au.Entries[0])
	}
	var mb struct {
		Mails []mailer.DevMailView `json:"mails"`
	}
	get("/admin/api/mailbox", &mb)
	get("/admin/api/mailbox/m1", &m)
	res, body := c.api("GET", "/admin/api/nope", testToken, "")
	if res.StatusCode != 404 || !strings.Contains(body, `"error"`) {
		t.Fatalf("unknown API path: %d %s", res.StatusCode, body)
	}
}

func TestUnavailableServices(t *testing.T) {
	e := newEnv(t, func(o *admin.Options) {
		o.Invites, o.Outbox, o.Deliveries, o.Bindings, o.Keys, o.Mailbox = nil, nil, nil, nil, nil, nil
	})
	c := e.client()
	c.login(testUser, testPassword)
	for p, want := range map[string]int{"/admin": 200, "/admin/invites": 503, "/admin/outbox": 503, "/admin/deliveries": 503,
		"/admin/bindings?address=a@b.c": 200, "/admin/keys": 503, "/admin/mailbox": 503, "/admin/settings": 200} {
		if res, _ := c.get(p); res.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", p, res.StatusCode, want)
		}
	}
	if res, _ := c.postCSRF("/admin/invites/x/revoke", nil); res.StatusCode != 503 {
		t.Errorf("revoke: %d", res.StatusCode)
	}
}
