package invites_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
)

// Spelling a blocked name another way must not get past a blocklist: server
// names with a port or a trailing dot, upper case or in Unicode/punycode;
// email domains written with fullwidth letters or ideographic full stops;
// keywords with zero-width spaces, bidi controls or fullwidth letters. The
// unauthenticated v1 store-invite lets anyone choose the sender.
func TestBlocklistsNormaliseBeforeMatching(t *testing.T) {
	e := start(t, func(c *config.Config) {
		c.Compat.V1 = true
		c.Invites.Blocklist.Homeservers = []string{"bad.test", "*.evil.test", "bücher.test"}
		c.Invites.Blocklist.Keywords = []string{"free crypto", "ｃａｓｉｎｏ"}
		c.Invites.EmailDomains.Deny = []string{"blocked.example", ".sub.example"}
	})
	v1 := func(sender, address, roomName, displayName string) (int, []byte) {
		b := inviteBody(sender, address)
		b["room_name"], b["sender_display_name"] = roomName, displayName
		return e.Do(t, http.MethodPost, "/_matrix/identity/api/v1/store-invite", b, "")
	}
	refused := []struct{ name, sender, address, room, display string }{
		{"port", "@a:bad.test:8448", "a@example.org", "Tea", "A"},
		{"trailing dot", "@a:bad.test.", "a@example.org", "Tea", "A"},
		{"trailing dot and port", "@a:bad.test.:443", "a@example.org", "Tea", "A"},
		{"upper case", "@a:BAD.Test", "a@example.org", "Tea", "A"},
		{"subdomain with port", "@a:x.evil.test:8448", "a@example.org", "Tea", "A"},
		{"apex of wildcard with port", "@a:evil.test:1", "a@example.org", "Tea", "A"},
		{"punycode of a Unicode entry", "@a:xn--bcher-kva.test", "a@example.org", "Tea", "A"},
		{"Unicode upper case", "@a:BÜCHER.test:8448", "a@example.org", "Tea", "A"},
		{"fullwidth domain", "@a:good.test", "x@ｂｌｏｃｋｅｄ.example", "Tea", "A"},
		{"ideographic full stop", "@a:good.test", "x@blocked。example", "Tea", "A"},
		{"fullwidth full stop", "@a:good.test", "x@blocked．EXAMPLE", "Tea", "A"},
		{"subdomain of a dot entry", "@a:good.test", "x@a.sub。example", "Tea", "A"},
		{"zero-width space in keyword", "@a:good.test", "a@example.org", "free\u200b crypto", "A"},
		{"bidi override in keyword", "@a:good.test", "a@example.org", "free cry\u202ept\u202co", "A"},
		{"soft hyphen in keyword", "@a:good.test", "a@example.org", "Tea", "free cryp\u00adto"},
		{"fullwidth keyword", "@a:good.test", "a@example.org", "ＦＲＥＥ ＣＲＹＰＴＯ", "A"},
		{"fullwidth configured keyword", "@a:good.test", "a@example.org", "CASINO night", "A"},
		{"word joiner in keyword", "@a:good.test", "a@example.org", "Tea", "cas\u2060ino"},
	}
	for _, c := range refused {
		status, body := v1(c.sender, c.address, c.room, c.display)
		if status != http.StatusForbidden || !strings.Contains(string(body), `"M_FORBIDDEN"`) {
			t.Errorf("%s: %d %s, want 403 M_FORBIDDEN", c.name, status, body)
		}
	}
	// Near misses still pass: the lists match names, not substrings.
	for _, c := range []struct{ name, sender, address, room string }{
		{"other server", "@a:notbad.test:8448", "a@example.org", "Tea"},
		{"other domain", "@a:good.test", "x@notblocked.example", "Tea"},
		{"other words", "@a:good.test", "a@example.org", "free tea, no crypto"},
	} {
		status, body := v1(c.sender, c.address, c.room, "A")
		if status != http.StatusOK {
			t.Errorf("%s: %d %s, want 200", c.name, status, body)
		}
	}
	if n := len(e.SMTP.WaitFor(3, 10*time.Second)); n != 3 {
		t.Errorf("%d mails, want 3 (one per accepted invite)", n)
	}
}

// An address with a zero-width, bidi or undecodable character would be
// stored and mailed as a distinct identity that looks like another one.
func TestStoreInviteRefusesInvisibleCharacters(t *testing.T) {
	e := start(t)
	tok := e.register(t, alice)
	for _, addr := range []string{"a\u200b@example.org", "\u202egro.elpmaxe@a", "a@exam\u200dple.org", "\ufffd@example.org"} {
		status, body := e.Do(t, http.MethodPost, "/_matrix/identity/v2/store-invite", inviteBody(alice, addr), tok)
		if status != http.StatusBadRequest || !strings.Contains(string(body), `"M_INVALID_EMAIL"`) {
			t.Errorf("address %q: %d %s, want 400 M_INVALID_EMAIL", addr, status, body)
		}
	}
	// Invalid UTF-8 in the JSON body decodes to U+FFFD: refused too.
	status, body := e.Do(t, http.MethodPost, "/_matrix/identity/v2/store-invite",
		`{"medium":"email","address":"a`+"\xff"+`@example.org","room_id":"!room:hs.test","sender":"`+alice+`"}`, tok)
	if status != http.StatusBadRequest || !strings.Contains(string(body), `"M_INVALID_EMAIL"`) {
		t.Errorf("invalid UTF-8: %d %s, want 400 M_INVALID_EMAIL", status, body)
	}
	if n := len(e.SMTP.Messages()); n != 0 {
		t.Errorf("%d mails sent", n)
	}
}

// Room and sender names carrying bidi overrides reach the mail without them:
// "Tea \u202egpj.exe" would otherwise display as "Tea exe.jpg".
func TestMailsStripBidiControls(t *testing.T) {
	e := start(t)
	inv := goldenInvite()
	inv.RoomName = "Tea \u202egpj.exe\u202c party"
	inv.SenderDisplayName = "\u2067Alice\u2069 \u200fAdmin\u200e"
	m, err := e.App.Invites().RenderMail(inv)
	if err != nil {
		t.Fatal(err)
	}
	for part, text := range map[string]string{"subject": m.Subject, "text": m.Text, "html": m.HTML} {
		if i := strings.IndexFunc(text, isBidiControl); i >= 0 {
			t.Errorf("%s keeps bidi control %U: %q", part, []rune(text[i:])[0], text)
		}
	}
	if !strings.Contains(m.Subject+m.Text, "Tea gpj.exe party") || !strings.Contains(m.Text, "Alice Admin") {
		t.Errorf("names lost more than their bidi controls:\nsubject %q\ntext %q", m.Subject, m.Text)
	}
}

func isBidiControl(r rune) bool {
	return r >= '\u202a' && r <= '\u202e' || r >= '\u2066' && r <= '\u2069' || r == '\u200e' || r == '\u200f' || r == '\u061c'
}

// The per-homeserver invite limit is not multiplied by writing the
// homeserver's name with a port, a trailing dot or in upper case.
func TestHomeserverLimitKeyIsNormalised(t *testing.T) {
	e := start(t, func(c *config.Config) {
		c.Compat.V1 = true
		c.Invites.RateLimits.Homeserver = config.RateLimit{PerHour: 1, Burst: 2}
	})
	for i, sender := range []string{"@a:flood.test:1", "@b:flood.test.", "@c:FLOOD.test:8448"} {
		b := inviteBody(sender, "limit"+string(rune('a'+i))+"@example.org")
		status, body := e.Do(t, http.MethodPost, "/_matrix/identity/api/v1/store-invite", b, "")
		if i < 2 && status != http.StatusOK {
			t.Fatalf("invite %d: %d %s", i, status, body)
		}
		if i == 2 && (status != http.StatusTooManyRequests || !strings.Contains(string(body), `"M_LIMIT_EXCEEDED"`)) {
			t.Fatalf("third invite from flood.test: %d %s, want 429 M_LIMIT_EXCEEDED", status, body)
		}
	}
}

// The sender's Matrix ID and the room ID are shown in the invite email as
// they are: with a bidi override or zero-width character they are refused
// (400 M_INVALID_PARAM), on the anonymous v1 API as on v2.
func TestStoreInviteRefusesInvisibleCharactersInIDs(t *testing.T) {
	e := start(t, func(c *config.Config) { c.Compat.V1 = true })
	for _, c := range []struct{ field, value string }{
		{"sender", "@admin\u202e:hs.test"}, {"sender", "@a\u200b:hs.test"}, {"sender", "@a:hs\ufffd.test"},
		{"room_id", "!room\u202e:hs.test"}, {"room_id", "!ro\u2066om:hs.test"},
	} {
		b := inviteBody(alice, "ids@example.org")
		b[c.field] = c.value
		status, body := e.Do(t, http.MethodPost, "/_matrix/identity/api/v1/store-invite", b, "")
		if status != http.StatusBadRequest || !strings.Contains(string(body), `"M_INVALID_PARAM"`) {
			t.Errorf("%s %q: %d %s, want 400 M_INVALID_PARAM", c.field, c.value, status, body)
		}
	}
	if n := len(e.SMTP.Messages()); n != 0 {
		t.Errorf("%d mails sent", n)
	}
}
