package e2e

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/herald-im/herald/admin"
	"github.com/herald-im/herald/internal/browsertest"
	"github.com/herald-im/herald/internal/hssim"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/mailer"
)

// The admin console in headless Chromium against the real stack: the real
// server.App with its bbolt file, mail sent over SMTP to an in-process
// server, invites stored through the Matrix API. (admin/browser_test.go
// drives the same pages against fakes, for states hard to reach for real.)

var updateScreenshots = flag.Bool("update-screenshots", false, "copy the real stack's dashboard and invite screenshots to docs/img (the README's)")

const (
	consoleUser     = "operator"
	consolePassword = "correct horse battery staple"
)

// inviteOf finds the one invite stored for address (normalised).
func inviteOf(t *testing.T, w *world, address string) *invites.Invite {
	t.Helper()
	list, _, err := w.env.App.Invites().List(invites.Filter{Address: address, Limit: 10})
	if err != nil || len(list) != 1 {
		t.Fatalf("invites for %s: %d, %v", address, len(list), err)
	}
	return list[0]
}

// waitSent waits until n mails with ref are recorded as sent by the outbox.
func waitSent(t *testing.T, w *world, ref string, n int) []mailer.Mail {
	t.Helper()
	var mails []mailer.Mail
	waitFor(t, "mail "+ref+" sent", func() bool {
		var err error
		mails, err = w.env.App.Mailer().ByRef(ref)
		if err != nil {
			t.Fatal(err)
		}
		sent := 0
		for _, m := range mails {
			if m.State == mailer.Sent {
				sent++
			}
		}
		return sent >= n
	})
	return mails
}

func isValid(t *testing.T, w *world, path, key string) bool {
	t.Helper()
	status, body := w.env.Do(t, "GET", path+"?public_key="+url.QueryEscape(key), nil, "")
	var v struct {
		Valid *bool `json:"valid"`
	}
	if status != 200 || json.Unmarshal(body, &v) != nil || v.Valid == nil {
		t.Fatalf("%s: %d %s", path, status, body)
	}
	return *v.Valid
}

func TestConsoleInBrowser(t *testing.T) {
	w := start(t, hssim.Synapse)
	if err := admin.CreateUser(w.env.App.DB(), consoleUser, consolePassword, false, time.Now()); err != nil {
		t.Fatal(err)
	}
	tok := w.env.Register(t, "@alice:hs.test")
	w.env.AcceptTerms(t, tok)
	_, carolAnswer := w.storeInvite(t, tok, "@alice:hs.test", "Carol.Jones@Example.ORG")
	_, _ = w.storeInvite(t, tok, "@alice:hs.test", "dave@example.net")
	carol, dave := inviteOf(t, w, "carol.jones@example.org"), inviteOf(t, w, "dave@example.net")
	carolRef, daveRef := "invite:"+strconv.FormatUint(carol.ID, 10), "invite:"+strconv.FormatUint(dave.ID, 10)
	waitSent(t, w, carolRef, 1)
	waitSent(t, w, daveRef, 1)
	waitMail(t, w.smtp, "dave@example.net", "", 0)
	if !ephemeralValid(t, w.env, carolAnswer) {
		t.Fatal("a fresh invite's ephemeral key is not valid")
	}
	// Bob's invite goes the whole way: he binds his address and the first
	// onbind call is refused (503) before the retry is accepted.
	_, _ = w.storeInvite(t, tok, "@alice:hs.test", "bob@example.org")
	bob := inviteOf(t, w, "bob@example.org")
	waitSent(t, w, "invite:"+strconv.FormatUint(bob.ID, 10), 1)
	w.sim.Fail(1, 503, "")
	btok := w.registerSim(t, "@bob:"+simName)
	w.bind(t, btok, w.validate(t, btok, "bob@example.org", "s3cret"), "s3cret", "@bob:"+simName)
	waitAccepted(t, w.sim, 1)
	waitDelivered(t, w, 1)

	ctx := browsertest.New(t, 120*time.Second)
	dir := browsertest.Artifacts(t, "e2e")
	base := w.env.URL
	must := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		browsertest.Must(t, ctx, dir, what, steps...)
	}
	shot := func(name string) {
		t.Helper()
		if err := browsertest.Screenshot(ctx, filepath.Join(dir, name)); err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
	}
	text := func(sel string) string { t.Helper(); return browsertest.Text(t, ctx, sel) }
	loc := func() string { t.Helper(); return browsertest.Location(t, ctx, base) }
	// noticeIs waits for the page a redirect lands on to show exactly msg.
	// It asks again while the page navigates (an evaluation then fails).
	noticeIs := func(msg string) chromedp.Action[chromedp.Void] {
		q, _ := json.Marshal(msg)
		expr := `(document.querySelector("p.notice")||{}).textContent === ` + string(q)
		return chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for {
				if ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr)); err == nil && ok {
					return nil
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("notice %q never shown: %w", msg, ctx.Err())
				case <-tick.C:
				}
			}
		})
	}

	// Log in: the console sends us to its login form first.
	must("open console", chromedp.Navigate(base+"/admin"), chromedp.WaitVisible(chromedp.CSS("input[name=password]")))
	if l := loc(); !strings.HasPrefix(l, "/admin/login") {
		t.Fatalf("not sent to login: %s", l)
	}
	must("log in",
		chromedp.SendKeys(chromedp.CSS("input[name=username]"), consoleUser),
		chromedp.SendKeys(chromedp.CSS("input[name=password]"), consolePassword),
		chromedp.Click(chromedp.CSS("button[type=submit]")),
		chromedp.WaitVisible(chromedp.CSS("form.logout")))
	must("dashboard", chromedp.Navigate(base+"/admin"), chromedp.WaitVisible(chromedp.CSS("svg.chart")))
	shot("dashboard-start.png")

	// Bob's resolved invite: the whole story on the real stack.
	must("bob's invite", chromedp.Navigate(base+"/admin/invites/"+strconv.FormatUint(bob.ID, 10)), chromedp.WaitVisible(chromedp.CSS("ol.timeline")))
	if h := text("h1"); !strings.Contains(h, "bob@example.org") || !strings.Contains(h, invites.StateResolved) {
		t.Fatalf("bob's invite heading %q", h)
	}
	// In this order: created, the email attempt with the SMTP reply, bound,
	// resolved, the refused delivery attempt, the accepted one.
	bobLine, at := text("ol.timeline"), 0
	for _, want := range []string{"created", "email attempt", "250", "bound", "@bob:" + simName, "resolved", "delivery attempt", "503", "delivery attempt", "200"} {
		i := strings.Index(bobLine[at:], want)
		if i < 0 {
			t.Fatalf("bob's timeline lacks %q after byte %d: %q", want, at, bobLine)
		}
		at += i + len(want)
	}
	shot("invite-resolved.png")

	// Find Carol's invite by her address typed in another case, and open it.
	typed := "CAROL.jones@EXAMPLE.org"
	carolLink := `a[href="/admin/invites/` + strconv.FormatUint(carol.ID, 10) + `"]`
	must("search",
		chromedp.Navigate(base+"/admin/invites"),
		chromedp.WaitVisible(chromedp.CSS("input[name=q]")),
		chromedp.SendKeys(chromedp.CSS("input[name=q]"), typed),
		chromedp.Click(chromedp.CSS("form.filters button[type=submit]")),
		// The answer page carries the query in the field's value attribute.
		chromedp.WaitVisible(chromedp.CSS(`input[name=q][value="`+typed+`"]`)),
		chromedp.WaitVisible(chromedp.CSS(carolLink)))
	if n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("table.list tbody tr").length`)); err != nil || n != 1 {
		t.Fatalf("search found %d rows (%v)", n, err)
	}
	shot("search.png")
	must("open invite", chromedp.Click(chromedp.CSS(carolLink)), chromedp.WaitVisible(chromedp.CSS("ol.timeline")))
	if h := text("h1"); !strings.Contains(h, "carol.jones@example.org") || !strings.Contains(h, invites.StateEmailed) {
		t.Fatalf("invite heading %q", h)
	}
	timeline := text("ol.timeline")
	for _, want := range []string{"created", "email queued", "email attempt", "250"} {
		if !strings.Contains(timeline, want) {
			t.Fatalf("timeline lacks %q: %q", want, timeline)
		}
	}
	shot("invite.png")

	// Revoke it: the invite is revoked and its ephemeral key no longer valid.
	must("revoke", chromedp.Click(chromedp.CSS(`form[action$="/revoke"] button`)), noticeIs("The invite was revoked."))
	if s := text("h1 .badge"); s != invites.StateRevoked {
		t.Fatalf("badge after revoke %q", s)
	}
	if got, err := w.env.App.Invites().Get(carol.ID); err != nil || got.State != invites.StateRevoked {
		t.Fatalf("after revoke: %+v %v", got, err)
	}
	if ephemeralValid(t, w.env, carolAnswer) {
		t.Fatal("a revoked invite's ephemeral key is still valid")
	}
	shot("revoked.png")

	// Resend Dave's email: a second mail arrives.
	must("open dave's invite", chromedp.Navigate(base+"/admin/invites/"+strconv.FormatUint(dave.ID, 10)),
		chromedp.WaitVisible(chromedp.CSS(`form[action$="/resend"] button`)))
	must("resend", chromedp.Click(chromedp.CSS(`form[action$="/resend"] button`)), noticeIs("The invite email was queued again."))
	waitMail(t, w.smtp, "dave@example.net", "", 1)
	waitSent(t, w, daveRef, 2)

	// Rotate the signing key: a new current key, the old one still valid.
	old := w.env.App.Ring().Current()
	must("keys", chromedp.Navigate(base+"/admin/keys"), chromedp.WaitVisible(chromedp.CSS(`form[action="/admin/keys/rotate"] button`)))
	must("rotate", chromedp.Click(chromedp.CSS(`form[action="/admin/keys/rotate"] button`)), noticeIs("A new signing key was made current."))
	cur := w.env.App.Ring().Current()
	if cur.ID == old.ID {
		t.Fatalf("still %s after rotation", cur.ID)
	}
	if !strings.Contains(text("table.list"), cur.ID) {
		t.Fatalf("keys page does not list %s", cur.ID)
	}
	if !isValid(t, w, "/_matrix/identity/v2/pubkey/isvalid", old.PublicBase64()) {
		t.Fatal("the rotated-out key is no longer valid")
	}
	if !isValid(t, w, "/_matrix/identity/v2/pubkey/isvalid", cur.PublicBase64()) {
		t.Fatal("the new key is not valid")
	}
	shot("keys.png")

	// The audit log names what we did.
	must("audit", chromedp.Navigate(base+"/admin/audit"), chromedp.WaitVisible(chromedp.CSS("table.list")))
	audit := text("table.list")
	for _, a := range []string{"login", "invite.revoke", "invite.resend", "key.rotate"} {
		if !strings.Contains(audit, a) {
			t.Fatalf("audit log lacks %s: %q", a, audit)
		}
	}

	// The dashboard after all that, for the README.
	must("dashboard again", chromedp.Navigate(base+"/admin"), chromedp.WaitVisible(chromedp.CSS("svg.chart")))
	cards := text("main")
	for _, want := range []string{"pending", "emailed", "resolved", "expired", "revoked", "declined", "failed", "emails queued", "deliveries failed", "last 24 h"} {
		if !strings.Contains(cards, want) {
			t.Fatalf("dashboard lacks %q: %q", want, cards)
		}
	}
	shot("dashboard.png")
	if *updateScreenshots {
		for from, to := range map[string]string{"dashboard.png": "admin-dashboard.png", "invite-resolved.png": "admin-invite.png"} {
			raw, err := os.ReadFile(filepath.Join(dir, from))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join("..", "docs", "img", to), raw, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}

	// Log out: the console is closed again.
	must("log out", chromedp.Click(chromedp.CSS("form.logout button")), noticeIs("You are logged out."))
	must("after logout", chromedp.Navigate(base+"/admin"), chromedp.WaitVisible(chromedp.CSS("input[name=password]")))
	if l := loc(); !strings.HasPrefix(l, "/admin/login") {
		t.Fatalf("after logout /admin went to %s", l)
	}
	if logs := strings.ToLower(w.env.Logs()); strings.Contains(logs, "carol.jones@example.org") || strings.Contains(logs, "dave@example.net") {
		t.Fatal("an address was logged in clear")
	}
}
