package admin_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/herald-im/herald/internal/browsertest"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/mailer"
)

func TestBrowser(t *testing.T) {
	e := newEnv(t)
	ctx := browsertest.New(t, 60*time.Second)
	dir := browsertest.Artifacts(t, "admin")
	must := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		browsertest.Must(t, ctx, dir, what, steps...)
	}
	text := func(sel string) string { t.Helper(); return browsertest.Text(t, ctx, sel) }
	loc := func() string { t.Helper(); return browsertest.Location(t, ctx, e.srv.URL) }

	// Log in: the console sends us to the login form first.
	must("open console", chromedp.Navigate(e.srv.URL+"/admin/invites"), chromedp.WaitVisible(chromedp.CSS("input[name=password]")))
	if l := loc(); !strings.HasPrefix(l, "/admin/login?next=") {
		t.Fatalf("not sent to login: %s", l)
	}
	must("log in",
		chromedp.SendKeys(chromedp.CSS("input[name=username]"), testUser),
		chromedp.SendKeys(chromedp.CSS("input[name=password]"), testPassword),
		chromedp.Click(chromedp.CSS("button[type=submit]")),
		chromedp.WaitVisible(chromedp.CSS("form.filters")))
	if l := loc(); l != "/admin/invites" {
		t.Fatalf("after login at %s", l)
	}

	// The dashboard, with times in local time by the script.
	must("dashboard", chromedp.Navigate(e.srv.URL+"/admin"), chromedp.WaitVisible(chromedp.CSS("svg.chart")))
	if s := text("footer"); !strings.Contains(s, "your local time") {
		t.Fatalf("script did not run: footer %q", s)
	}
	shot(t, ctx, filepath.Join(dir, "dashboard.png"))

	// Find an invite by its address, typed differently, and open it.
	must("search",
		chromedp.Navigate(e.srv.URL+"/admin/invites"),
		chromedp.WaitVisible(chromedp.CSS("input[name=q]")),
		chromedp.SendKeys(chromedp.CSS("input[name=q]"), "Dana.Katz@EXAMPLE.net"),
		chromedp.Click(chromedp.CSS("form.filters button[type=submit]")),
		// The answer page carries the query in the field's value attribute.
		chromedp.WaitVisible(chromedp.CSS(`input[name=q][value="Dana.Katz@EXAMPLE.net"]`)),
		chromedp.WaitVisible(chromedp.CSS(`a[href="/admin/invites/inv-dana"]`)))
	if n, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("table.list tbody tr").length`)); n != 1 {
		t.Fatalf("search found %d rows", n)
	}
	shot(t, ctx, filepath.Join(dir, "search.png"))
	must("open invite", chromedp.Click(chromedp.CSS(`a[href="/admin/invites/inv-dana"]`)), chromedp.WaitVisible(chromedp.CSS("ol.timeline")))

	// Revoke it.
	must("revoke", chromedp.Click(chromedp.CSS(`form[action$="/revoke"] button`)), chromedp.WaitVisible(chromedp.CSS("p.notice")))
	if s := text("p.notice"); s != "The invite was revoked." {
		t.Fatalf("notice %q", s)
	}
	if s := text("h1 .badge"); s != "revoked" || e.inv.invites["inv-dana"].State != invites.StateRevoked {
		t.Fatalf("badge %q", s)
	}

	// Resend the email of an invite whose mail bounced.
	must("open failed invite", chromedp.Navigate(e.srv.URL+"/admin/invites?state=failed"), chromedp.WaitVisible(chromedp.CSS(`a[href="/admin/invites/inv-walter"]`)),
		chromedp.Click(chromedp.CSS(`a[href="/admin/invites/inv-walter"]`)), chromedp.WaitVisible(chromedp.CSS("ol.timeline")))
	must("resend", chromedp.Click(chromedp.CSS(`form[action$="/resend"] button`)), chromedp.WaitVisible(chromedp.CSS("p.notice")))
	if s := text("ol.timeline"); !strings.Contains(s, "You have been invited (again)") {
		t.Fatalf("timeline after resend: %q", s)
	}

	// An invite's whole story, for the README.
	must("timeline", chromedp.Navigate(e.srv.URL+"/admin/invites/inv-fox"), chromedp.WaitVisible(chromedp.CSS("ol.timeline")))
	if s := text("ol.timeline"); !strings.Contains(s, "connection refused") || !strings.Contains(s, "250 2.0.0") {
		t.Fatalf("timeline %q", s)
	}
	shot(t, ctx, filepath.Join(dir, "invite.png"))

	// Rotate the signing key.
	before := e.ring.Current().ID
	must("rotate", chromedp.Navigate(e.srv.URL+"/admin/keys"), chromedp.WaitVisible(chromedp.CSS(`form[action="/admin/keys/rotate"] button`)),
		chromedp.Click(chromedp.CSS(`form[action="/admin/keys/rotate"] button`)), chromedp.WaitVisible(chromedp.CSS("p.notice")))
	after := e.ring.Current().ID
	if after == before || !strings.Contains(text("table.list"), after) {
		t.Fatalf("rotate: %s -> %s", before, after)
	}
	shot(t, ctx, filepath.Join(dir, "keys.png"))

	// The audit log shows what we did.
	must("audit", chromedp.Navigate(e.srv.URL+"/admin/audit"), chromedp.WaitVisible(chromedp.CSS("table.list")))
	audit := text("table.list")
	for _, a := range []string{"invite.revoke", "invite.resend", "key.rotate", "login"} {
		if !strings.Contains(audit, a) {
			t.Fatalf("audit page lacks %s: %q", a, audit)
		}
	}

	// A hostile HTML mail in the dev mailbox runs no script, even opened on
	// its own (the frame's sandbox and the answer's CSP sandbox both hold).
	e.box.mails = append(e.box.mails, mailer.DevMailView{ID: "m-evil", To: "eve@example.net", Subject: "Hostile", Date: time.Now(),
		HTML: `<p id="t">static</p><script>document.getElementById("t").textContent="script ran";top.location="/admin/audit?pwned"</script>` +
			`<img src="data:," onerror="document.getElementById('t').textContent='handler ran'">`})
	must("hostile mail", chromedp.Navigate(e.srv.URL+"/admin/mailbox/m-evil"), chromedp.WaitVisible(chromedp.CSS(`iframe.mail[sandbox=""]`)))
	must("hostile mail alone", chromedp.Navigate(e.srv.URL+"/admin/mailbox/m-evil/html"), chromedp.WaitReady(chromedp.CSS("img")))
	if s := text("#t"); s != "static" || loc() != "/admin/mailbox/m-evil/html" {
		t.Fatalf("a script in a mail ran: %q at %s", s, loc())
	}

	// On a phone-sized screen the dashboard still reads.
	must("phone", chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile), chromedp.Navigate(e.srv.URL+"/admin/invites"), chromedp.WaitVisible(chromedp.CSS("form.filters")))
	if w, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`document.documentElement.scrollWidth`)); w > 400 {
		t.Errorf("page is %d px wide on a 390 px screen", w)
	}
	if buf, err := chromedp.Run(ctx, chromedp.CaptureScreenshot()); err == nil {
		_ = os.WriteFile(filepath.Join(dir, "invites-phone.png"), buf, 0o644)
	}
	must("desktop", chromedp.EmulateReset())

	// Log out: the console is closed again.
	must("log out", chromedp.Click(chromedp.CSS("form.logout button")), chromedp.WaitVisible(chromedp.CSS("input[name=password]")))
	if s := text("p.notice"); s != "You are logged out." {
		t.Fatalf("notice %q", s)
	}
	must("after logout", chromedp.Navigate(e.srv.URL+"/admin/keys"), chromedp.WaitVisible(chromedp.CSS("input[name=password]")))
}

func shot(t *testing.T, ctx context.Context, path string) {
	t.Helper()
	if err := browsertest.Screenshot(ctx, path); err != nil {
		t.Errorf("screenshot %s: %v", path, err)
	}
}
