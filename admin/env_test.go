package admin_test

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herald-im/herald/admin"
	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/queue"
	"github.com/herald-im/herald/store"
)

const (
	testUser     = "root"
	testPassword = "correct horse battery"
	testToken    = "test-admin-api-token-0123456789"
)

type clock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.offset += d
	c.mu.Unlock()
}

type env struct {
	t     testing.TB
	cfg   *config.Config
	db    *store.DB
	h     *admin.Handler
	srv   *httptest.Server
	clock *clock
	inv   *fakeInvites
	out   *fakeOutbox
	dels  *fakeDeliveries
	binds *fakeBindings
	box   *fakeMailbox
	ring  *keys.Ring
}

func newEnv(t testing.TB, mods ...func(*admin.Options)) *env {
	t.Helper()
	dir := t.TempDir()
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.SMTP.Password = "smtp-hunter2"
	cfg.SMTP.Username = "herald"
	cfg.Admin.APITokens = []config.Secret{testToken}
	bdb, err := store.Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	db := store.NewBolt(bdb)
	t.Cleanup(func() {
		// In a write transaction: bbolt's Check reads the freelist, which
		// a writer still running would change under it.
		if err := db.Update(func(tx *store.Tx) error {
			for err := range tx.Bolt.Check() {
				return err
			}
			return nil
		}); err != nil {
			t.Errorf("bbolt check: %v", err)
		}
		db.Close()
	})
	ring, err := keys.OpenRing(filepath.Join(dir, "keys"), "id.example.org")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, cfg: &cfg, db: db, clock: &clock{}, ring: ring}
	e.out = &fakeOutbox{now: e.clock.now}
	e.inv = &fakeInvites{invites: map[string]*invites.View{}, now: e.clock.now, outbox: e.out}
	e.dels = &fakeDeliveries{dels: map[string]*invites.DeliveryView{}, now: e.clock.now}
	e.binds = &fakeBindings{m: map[string]identity.BindingView{}}
	e.box = &fakeMailbox{}
	seed(e)
	if err := admin.CreateUser(db, testUser, testPassword, false, e.clock.now()); err != nil {
		t.Fatal(err)
	}
	opts := admin.Options{
		DB: db, Config: &cfg,
		Invites: e.inv, Outbox: e.out, Deliveries: e.dels, Bindings: e.binds, Keys: ring, Mailbox: e.box,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: e.clock.now,
	}
	for _, m := range mods {
		m(&opts)
	}
	e.h, err = admin.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewServer(e.h)
	t.Cleanup(e.srv.Close)
	return e
}

// seed fills the fakes with a realistic month of invites.
func seed(e *env) {
	now := e.clock.now().UTC()
	rooms := []struct{ id, alias, name string }{
		{"!apollo:example.org", "#apollo:example.org", "Project Apollo"},
		{"!books:matrix.example.com", "#books:matrix.example.com", "Book club"},
		{"!oncall:chat.acme.io", "", "Ops on-call"},
	}
	senders := []struct{ id, name, hs string }{
		{"@alice:example.org", "Alice", "example.org"},
		{"@bob:matrix.example.com", "Bob", "matrix.example.com"},
		{"@carol:chat.acme.io", "Carol", "chat.acme.io"},
	}
	people := []string{"jane", "omar", "li.wei", "sam", "priya", "noah", "eva", "kofi", "lena", "raj", "mia", "tom"}
	states := []string{invites.StateResolved, invites.StateEmailed, invites.StateResolved, invites.StateExpired, invites.StateResolved,
		invites.StateEmailed, invites.StateDeclined, invites.StateResolved, invites.StatePending, invites.StateRevoked, invites.StateFailed, invites.StateResolved}
	n := 0
	for day := 29; day >= 0; day-- {
		for k := 0; k < 1+(day*7+3)%4; k++ {
			n++
			r, s := rooms[n%len(rooms)], senders[(n/2)%len(senders)]
			created := now.Add(-time.Duration(day)*24*time.Hour - time.Duration(k*97+n*13)%(20*time.Hour))
			st := states[n%len(states)]
			if day > 7 && (st == invites.StatePending || st == invites.StateEmailed) {
				st = invites.StateExpired
			}
			addr := fmt.Sprintf("%s%d@example.net", people[n%len(people)], n)
			inv := &invites.View{ID: fmt.Sprintf("inv%03d", n), Address: addr, State: st, RoomID: r.id, RoomAlias: r.alias, RoomName: r.name,
				Sender: s.id, SenderDisplayName: s.name, Homeserver: s.hs, Created: created, Expires: created.Add(7 * 24 * time.Hour), MailRef: fmt.Sprintf("invite:inv%03d", n)}
			inv.Events = []invites.Event{{At: created, Kind: "created", Detail: "store-invite from " + s.hs, OK: true}}
			mail := mailer.View{To: addr, Subject: s.name + " invited you to " + r.name, Kind: "invite", Ref: inv.MailRef, State: string(mailer.Sent), Created: created,
				Attempts: []queue.AttemptView{{At: created.Add(2 * time.Second), Reply: "250 2.0.0 Ok: queued as 4Xk" + fmt.Sprint(n), OK: true}}}
			if st == invites.StatePending {
				mail.State, mail.Attempts = "pending", []queue.AttemptView{{At: created.Add(time.Second), Reply: "421 4.7.0 Try again later, closing connection", Temporary: true}}
				mail.NextAttempt = now.Add(5 * time.Minute)
			}
			if st == invites.StateFailed {
				mail.State, mail.Attempts = "failed", []queue.AttemptView{{At: now.Add(-3 * time.Hour), Reply: "550 5.1.1 <" + addr + ">: Recipient address rejected: User unknown"}}
			}
			e.out.add(mail)
			if st == invites.StateResolved {
				mx := "@" + strings.Split(addr, "@")[0] + ":" + s.hs
				inv.MXID = mx
				bound := created.Add(90 * time.Minute)
				inv.Events = append(inv.Events, invites.Event{At: bound, Kind: "bound", Detail: "to " + mx, OK: true},
					invites.Event{At: bound.Add(time.Second), Kind: "resolved", Detail: "delivered to " + s.hs, OK: true})
				e.dels.dels[fmt.Sprint("d", n)] = &invites.DeliveryView{ID: fmt.Sprint("d", n), Homeserver: s.hs, MXID: mx, Address: addr, Invites: []string{inv.ID},
					State: string(invites.DeliveryDelivered), Created: bound, Attempts: []queue.AttemptView{{At: bound.Add(time.Second), Reply: "200 OK {}", OK: true}}}
				e.binds.m[addr] = identity.BindingView{Address: addr, MXID: mx, Bound: bound}
			}
			if st == invites.StateExpired {
				inv.Events = append(inv.Events, invites.Event{At: created.Add(7 * 24 * time.Hour), Kind: "expired", OK: false})
			}
			e.inv.invites[inv.ID] = inv
		}
	}
	// Two invites the tests and the screenshots look at.
	t0 := now.Add(-26 * time.Hour)
	fox := &invites.View{ID: "inv-fox", Address: "fox.mulder@example.net", State: invites.StateResolved, RoomID: "!xfiles:example.org", RoomAlias: "#xfiles:example.org",
		RoomName: "The X-Files", Sender: "@dana:example.org", SenderDisplayName: "Dana Scully", Homeserver: "example.org", Created: t0, Expires: t0.Add(7 * 24 * time.Hour),
		MXID: "@fox:matrix.example.com", MailRef: "invite:inv-fox", Fields: map[string]string{"room_join_rules": "invite", "org.matrix.web_client_location": "https://app.element.io"}}
	fox.Events = []invites.Event{
		{At: t0, Kind: "created", Detail: "store-invite from example.org", OK: true},
		{At: t0.Add(3*time.Hour + 10*time.Minute), Kind: "bound", Detail: "fox.mulder@example.net bound to @fox:matrix.example.com", OK: true},
		{At: t0.Add(3*time.Hour + 42*time.Minute + 41*time.Second), Kind: "resolved", Detail: "accepted by matrix.example.com", OK: true},
	}
	e.inv.invites[fox.ID] = fox
	e.out.add(mailer.View{To: fox.Address, Subject: "Dana Scully invited you to The X-Files", Kind: "invite", Ref: fox.MailRef, State: string(mailer.Sent), Created: t0,
		Attempts: []queue.AttemptView{
			{At: t0.Add(time.Second), Reply: "421 4.7.0 mx.example.net: too many connections, try again later", Temporary: true},
			{At: t0.Add(31 * time.Second), Reply: "250 2.0.0 Ok: queued as 7C1F2A0B3", OK: true},
		}})
	b := t0.Add(3*time.Hour + 10*time.Minute)
	e.dels.dels["d-fox"] = &invites.DeliveryView{ID: "d-fox", Homeserver: "matrix.example.com", MXID: "@fox:matrix.example.com", Address: fox.Address, Invites: []string{fox.ID},
		State: string(invites.DeliveryDelivered), Created: b, Attempts: []queue.AttemptView{
			{At: b.Add(time.Second), Reply: "dial tcp 203.0.113.7:8448: connect: connection refused", Temporary: true},
			{At: b.Add(32 * time.Minute), Reply: "502 Bad Gateway", Temporary: true},
			{At: b.Add(32*time.Minute + 40*time.Second), Reply: "200 OK {}", OK: true},
		}}
	e.binds.m[fox.Address] = identity.BindingView{Address: fox.Address, MXID: "@fox:matrix.example.com", Bound: b}

	t1 := now.Add(-2 * time.Hour)
	dana := &invites.View{ID: "inv-dana", Address: "dana.katz@example.net", State: invites.StateEmailed, RoomID: "!apollo:example.org", RoomAlias: "#apollo:example.org",
		RoomName: "Project Apollo", Sender: "@alice:example.org", SenderDisplayName: "Alice", Homeserver: "example.org", Created: t1, Expires: t1.Add(7 * 24 * time.Hour), MailRef: "invite:inv-dana"}
	dana.Events = []invites.Event{{At: t1, Kind: "created", Detail: "store-invite from example.org", OK: true}}
	e.inv.invites[dana.ID] = dana
	e.out.add(mailer.View{To: dana.Address, Subject: "Alice invited you to Project Apollo", Kind: "invite", Ref: dana.MailRef, State: string(mailer.Sent), Created: t1,
		Attempts: []queue.AttemptView{{At: t1.Add(time.Second), Reply: "250 2.0.0 Ok: queued as 91AB77", OK: true}}})
	walt := &invites.View{ID: "inv-walter", Address: "walter@example.net", State: invites.StateFailed, RoomID: "!books:matrix.example.com", RoomName: "Book club",
		Sender: "@bob:matrix.example.com", SenderDisplayName: "Bob", Homeserver: "matrix.example.com", Created: t1.Add(-time.Hour), MailRef: "invite:inv-walter"}
	walt.Events = []invites.Event{{At: walt.Created, Kind: "created", OK: true}}
	e.inv.invites[walt.ID] = walt
	e.out.add(mailer.View{To: walt.Address, Subject: "Bob invited you to Book club", Kind: "invite", Ref: walt.MailRef, State: "failed", Created: walt.Created,
		Attempts: []queue.AttemptView{{At: walt.Created.Add(time.Second), Reply: "550 5.7.1 Message rejected as spam"}}})
	e.dels.dels["d-stuck"] = &invites.DeliveryView{ID: "d-stuck", Homeserver: "hs.unreachable.example", MXID: "@zoe:hs.unreachable.example", Address: "zoe@example.net",
		Invites: []string{"inv001"}, State: "failed", Created: now.Add(-5 * time.Hour), Attempts: []queue.AttemptView{
			{At: now.Add(-5 * time.Hour), Reply: "dial tcp: lookup hs.unreachable.example: no such host", Temporary: true},
			{At: now.Add(-4 * time.Hour), Reply: "403 M_FORBIDDEN: Unknown room"}}}
	e.box.mails = []mailer.DevMailView{{ID: "m1", To: dana.Address, Subject: "Alice invited you to Project Apollo", Date: t1,
		Text: "Alice (@alice:example.org) invited you to Project Apollo.", HTML: "<p style=\"color:#333\">Alice invited you to <b>Project Apollo</b>.</p><script>alert(1)</script>"}}
}

// client is a browser-like HTTP client that does not follow redirects.
type client struct {
	t    testing.TB
	base string
	hc   *http.Client
	csrf string
}

func (e *env) client() *client {
	jar, _ := cookiejar.New(nil)
	return &client{t: e.t, base: e.srv.URL, hc: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (c *client) do(req *http.Request) (*http.Response, string) {
	c.t.Helper()
	res, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if m := csrfRE.FindStringSubmatch(string(b)); m != nil && !strings.Contains(req.URL.Path, "/login") {
		c.csrf = m[1]
	}
	return res, string(b)
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func (c *client) get(path string) (*http.Response, string) {
	req, _ := http.NewRequest(http.MethodGet, c.base+path, nil)
	return c.do(req)
}

func (c *client) post(path string, form url.Values) (*http.Response, string) {
	req, _ := http.NewRequest(http.MethodPost, c.base+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return c.do(req)
}

// postCSRF posts a form with the session's CSRF token.
func (c *client) postCSRF(path string, form url.Values) (*http.Response, string) {
	if form == nil {
		form = url.Values{}
	}
	form.Set("csrf", c.csrf)
	return c.post(path, form)
}

func (c *client) login(user, pass string) *http.Response {
	c.t.Helper()
	_, body := c.get("/admin/login")
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		c.t.Fatalf("no csrf field in login page: %s", body)
	}
	res, _ := c.post("/admin/login", url.Values{"csrf": {m[1]}, "username": {user}, "password": {pass}, "next": {"/admin"}})
	if res.StatusCode == http.StatusSeeOther {
		c.get("/admin") // pick up the session's CSRF token
	}
	return res
}

func (c *client) api(method, path, token, body string) (*http.Response, string) {
	req, _ := http.NewRequest(method, c.base+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.do(req)
}
