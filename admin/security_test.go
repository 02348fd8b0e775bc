package admin_test

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/admin"
)

// clientFrom is a browser-like client whose connections come from ip, a
// loopback address (127.0.0.0/8 is all loopback): the console sees each as
// a different client.
func (e *env) clientFrom(ip string) *client {
	c := e.client()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	c.hc.Transport = &http.Transport{DialContext: d.DialContext}
	return c
}

// loginForm fetches the login form once and returns a function posting it
// with the same CSRF pair (cookie and field), as an attacker scripting the
// form would.
func (c *client) loginForm() func(user, pass string) int {
	c.t.Helper()
	res, body := c.get("/admin/login")
	m := csrfRE.FindStringSubmatch(body)
	if m == nil || len(res.Cookies()) != 1 {
		c.t.Fatalf("no csrf field or cookie in login page: %v %s", res.Cookies(), body)
	}
	ck := res.Cookies()[0]
	c.hc.Jar = nil
	return func(user, pass string) int {
		req, _ := http.NewRequest(http.MethodPost, c.base+"/admin/login",
			strings.NewReader(url.Values{"csrf": {m[1]}, "username": {user}, "password": {pass}, "next": {"/admin"}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.AddCookie(&http.Cookie{Name: ck.Name, Value: ck.Value})
		res, err := c.hc.Do(req)
		if err != nil {
			c.t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
}

// frozen stops the console's clock, so that no rate-limit token comes back
// while a test runs, however slow the machine.
func frozen(o *admin.Options) {
	t := time.Now()
	o.Now = func() time.Time { return t }
}

// Issue 9 point 11: five wrong passwords from one client must not lock the
// real admin out everywhere; the limit is per (client, username).
func TestLoginLockoutIsPerClient(t *testing.T) {
	e := newEnv(t, frozen)
	attacker := e.clientFrom("127.0.0.2").loginForm()
	for i := 0; i < 5; i++ {
		if code := attacker(testUser, "wrong password"); code != http.StatusUnauthorized {
			t.Fatalf("attempt %d: %d, want 401", i+1, code)
		}
	}
	if code := attacker(testUser, testPassword); code != http.StatusTooManyRequests {
		t.Fatalf("attacker's 6th attempt: %d, want 429", code)
	}
	// The admin, from another address, logs in.
	if res := e.clientFrom("127.0.0.3").login(testUser, testPassword); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("the admin from another client after the attacker's 5 wrong passwords: %d, want 303", res.StatusCode)
	}
	// The attacker is still limited for that name, and for any name once its
	// per-client budget (20) is spent.
	if code := attacker(testUser, testPassword); code != http.StatusTooManyRequests {
		t.Fatalf("attacker after the admin's login: %d", code)
	}
	codes := map[int]int{}
	for i := 0; i < 20; i++ {
		codes[attacker(fmt.Sprintf("name%d", i), "wrong password")]++
	}
	if codes[http.StatusUnauthorized] != 15 || codes[http.StatusTooManyRequests] != 5 {
		t.Fatalf("attacker spraying names: %v, want 15 checked (20 per client) then 429", codes)
	}
	// X-Forwarded-For does not make a new client: no proxy is trusted.
	c := e.clientFrom("127.0.0.2")
	res, body := c.get("/admin/login")
	m := csrfRE.FindStringSubmatch(body)
	req, _ := http.NewRequest(http.MethodPost, c.base+"/admin/login", strings.NewReader(url.Values{"csrf": {m[1]}, "username": {"other"}, "password": {"x"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Forwarded-For", "198.51.100.7")
	c.hc.Jar = nil
	req.AddCookie(res.Cookies()[0])
	if res, _ := c.do(req); res.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("spoofed X-Forwarded-For: %d, want 429", res.StatusCode)
	}
}

// Issue 9 point 11: spraying 10,000 usernames used to empty the limiter's
// table and with it every lock. A lock held by a client survives any spray.
func TestLoginLockSurvivesUsernameSpray(t *testing.T) {
	e := newEnv(t, frozen)
	attacker := e.clientFrom("127.0.0.2").loginForm()
	for i := 0; i < 5; i++ {
		attacker(testUser, "wrong password")
	}
	if code := attacker(testUser, "wrong password"); code != http.StatusTooManyRequests {
		t.Fatalf("6th attempt: %d, want 429", code)
	}
	spray := e.clientFrom("127.0.0.4").loginForm()
	for i := 0; i < 10001; i++ {
		spray(fmt.Sprintf("spray%d", i), "wrong password")
	}
	if code := attacker(testUser, "wrong password"); code != http.StatusTooManyRequests {
		t.Fatalf("after a spray of 10,001 usernames the lock is gone: %d, want 429", code)
	}
}

// Issue 9 point 1: a long username is refused before it is checked, stored
// or logged; refused attempts are counted, not written one by one.
func TestLoginInputCappedAndRefusalsCounted(t *testing.T) {
	e := newEnv(t)
	form := e.clientFrom("127.0.0.5").loginForm()
	long := strings.Repeat("u", admin.MaxUsernameBytes+1)
	if code := form(long, "wrong password"); code != http.StatusBadRequest {
		t.Fatalf("username of %d bytes: %d, want 400", len(long), code)
	}
	if code := form(strings.Repeat("v", 400<<10), "wrong password"); code != http.StatusRequestEntityTooLarge {
		t.Fatalf("username of 400 KB: %d, want 413", code)
	}
	for i := 0; i < 5; i++ {
		if code := form(long[:admin.MaxUsernameBytes], "wrong password"); code != http.StatusUnauthorized {
			t.Fatalf("username of %d bytes: %d, want 401", admin.MaxUsernameBytes, code)
		}
	}
	for i := 0; i < 100; i++ {
		if code := form(long[:admin.MaxUsernameBytes], "wrong password"); code != http.StatusTooManyRequests {
			t.Fatalf("attempt %d: %d, want 429", i+6, code)
		}
	}
	es, err := e.h.Audit(1000, 0)
	if err != nil {
		t.Fatal(err)
	}
	var failed, refused []admin.AuditEntry
	for _, en := range es {
		if strings.Contains(en.Who, long) {
			t.Fatalf("the over-long username was stored: %+v", en)
		}
		switch en.Action {
		case "login":
			failed = append(failed, en)
		case "login refused":
			refused = append(refused, en)
		}
	}
	// The 5 checked attempts each have an entry; the first refusal (the
	// too-long name) wrote one for itself, the other 100 wait for a minute.
	if len(failed) != 5 || len(refused) != 1 || !strings.Contains(refused[0].Detail, "1 username or password too long") {
		t.Fatalf("audit log: %d login, %d refused entries: %+v", len(failed), len(refused), es)
	}
	// A minute later, the next refusal writes the count.
	e.clock.advance(time.Minute)
	form(long, "wrong password")
	es, _ = e.h.Audit(1, 0)
	if len(es) != 1 || es[0].Action != "login refused" || !strings.Contains(es[0].Detail, "101 login attempts refused") ||
		!strings.Contains(es[0].Detail, "100 rate limited, 1 username or password too long") {
		t.Fatalf("the next minute's count: %+v", es)
	}
}
