package invites

import (
	"encoding/binary"
	"hash/fnv"
	"io"
	"net/url"
	"strings"
	"testing"

	"github.com/herald-im/herald/config"
)

// TestJoinURLMatchesValuesEncode: JoinURL writes its query as
// url.Values.Encode did, for room names, types and addresses that need
// escaping.
func TestJoinURLMatchesValuesEncode(t *testing.T) {
	c := new(config.Config)
	*c = config.Default()
	c.PublicBaseURL = "https://id.example.org"
	c.Email.WebClientURL = "https://app.example.org/"
	for _, inv := range []*Invite{
		{Token: "T+k/=", EphemeralPrivate: "a+b/c==", Address: "a+b@example.org", RoomID: "!r:x.org",
			RoomName: "Tea & Cake ü", RoomAvatarURL: "mxc://x/a b", SenderDisplayName: "Eve\n<e@x>", Sender: "@e:x"},
		{Token: "t", EphemeralPrivate: "k", Address: "b@x", RoomID: "!s/p ace:x", RoomType: "m.space", Sender: "@s:x"},
		{Token: "t", EphemeralPrivate: "k", Address: "b@x", RoomID: "!r:x", RoomType: " \u202e", Sender: "@s:x"},
	} {
		q := url.Values{}
		q.Set("email", inv.Address)
		q.Set("signurl", SignURL(c, inv))
		q.Set("room_name", clean(inv.RoomName))
		q.Set("room_avatar_url", clean(inv.RoomAvatarURL))
		q.Set("inviter_name", clean(inviterName(inv)))
		if inv.RoomType != "" {
			q.Set("room_type", clean(inv.RoomType))
		}
		want := webClient(c, inv) + "/#/room/" + strings.ReplaceAll(url.PathEscape(inv.RoomID), "%21", "!") + "?" + q.Encode()
		if got := JoinURL(c, inv); got != want {
			t.Errorf("JoinURL\n got %s\nwant %s", got, want)
		}
	}
}

// TestMailVersionUnchanged: mailVersion is the hash it was (binary.Write of
// the templates' version, then each setting and a NUL), so a mail queued
// before an upgrade is not taken for one queued before a change.
func TestMailVersionUnchanged(t *testing.T) {
	c := new(config.Config)
	*c = config.Default()
	c.PublicBaseURL = "https://id.example.org"
	c.Email.BrandName = "Example ID"
	c.Email.WebClientAllowlist = []string{"https://chat.example.org", "https://b.example"}
	tm, err := loadInviteTemplates(c, "")
	if err != nil {
		t.Fatal(err)
	}
	h := fnv.New32a()
	_ = binary.Write(h, binary.BigEndian, tm.Version())
	for _, v := range append([]string{c.BaseURL(), c.Email.BrandName, c.Email.WebClientURL}, c.Email.WebClientAllowlist...) {
		_, _ = io.WriteString(h, v+"\x00")
	}
	s := &Service{cfg: c}
	if got, want := s.mailVersion(tm), h.Sum32(); got != want {
		t.Fatalf("mailVersion = %08x, want %08x", got, want)
	}
}

// FuzzCleanShortcut: whatever the text, clean gives what it gave without
// the isClean shortcut, and the shortcut is taken only when that is the
// text itself.
func FuzzCleanShortcut(f *testing.F) {
	for _, s := range []string{"", " ", "Tea & Cake", " lead", "trail ", "two  spaces", "tab\there", "nl\n", "\u00a0nbsp",
		"bidi\u202eevil", "ls\u2028", "\x7f", "\x85", "\xff", "\ufffd", "ünïcödé 日本語", strings.Repeat("é", 200),
		strings.Repeat("é", 201), strings.Repeat("a ", 100), strings.Repeat("a ", 101) + "a", "\u3000ideographic", "a\u200eb"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want := cleanFull(s)
		if got := clean(s); got != want {
			t.Fatalf("clean(%q) = %q, want %q", s, got, want)
		}
		if isClean(s) && want != s {
			t.Fatalf("isClean(%q) but clean gives %q", s, want)
		}
	})
}

// TestIsCleanCommonNames: the shortcut is taken for ordinary names.
func TestIsCleanCommonNames(t *testing.T) {
	for _, s := range []string{"", "Tea & Cake", "Alice", "#tea:hs.test", "mxc://hs.test/avatar", "Ünïcödé 日本語 room"} {
		if !isClean(s) {
			t.Errorf("isClean(%q) = false", s)
		}
	}
}
