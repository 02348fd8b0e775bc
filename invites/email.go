package invites

import (
	"embed"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"html"
	"io"
	"io/fs"
	"net/url"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/textnorm"
	"github.com/herald-im/herald/mailer"
)

//go:embed templates/invite.*
var embedded embed.FS

// DefaultTemplates are the embedded invite email templates (invite.subject.txt,
// invite.txt, invite.html).
func DefaultTemplates() fs.FS {
	sub, _ := fs.Sub(embedded, "templates")
	return sub
}

type mailTemplates struct {
	t *mailer.Templates
	// brands are the template sets in email.templates_dir/<brand>/
	// (brand.go); t is the default brand's when email.default_brand is set.
	brands map[string]*mailer.Templates
}

// loadMailTemplates loads the "invite" templates (operator overrides from
// email.templates_dir) and renders them once with sample data, so a broken
// or misspelt template stops start-up.
func loadMailTemplates(c *config.Config) (*mailTemplates, error) {
	return loadBrands(c, func(dir string) (*mailer.Templates, error) { return loadInviteTemplates(c, dir) })
}

// loadInviteTemplates loads and checks the invite templates of one
// directory ("" for the embedded ones only).
func loadInviteTemplates(c *config.Config, dir string) (*mailer.Templates, error) {
	t, err := mailer.LoadTemplates(DefaultTemplates(), dir, "invite")
	if err != nil {
		return nil, fmt.Errorf("invite email templates: %w", err)
	}
	sample := &Invite{
		ID: 1, Token: "SampleToken", Medium: "email", Address: "invitee@example.org",
		RoomID: "!room:example.org", Sender: "@alice:example.org", RoomAlias: "#room:example.org",
		RoomName: "Sample room", RoomAvatarURL: "mxc://example.org/a", RoomJoinRules: "invite",
		RoomType: "", SenderDisplayName: "Alice", SenderAvatarURL: "mxc://example.org/b",
		EphemeralPrivate: "c2FtcGxl", Homeserver: "example.org",
	}
	if err := t.Check(templateData(c, sample, t.Uses)); err != nil {
		return nil, fmt.Errorf("invite email templates (%s): %w", strings.Join(t.Files(), ", "), err)
	}
	return t, nil
}

// TemplateFiles lists the invite templates in use, for the start-up log.
func (s *Service) TemplateFiles() []string { return s.mail.t.Files() }

// clean makes a request value safe for a one-line spot in a mail: control
// characters (line breaks included) become spaces, bidi controls (U+202E and
// the other embeddings, overrides, isolates and marks) are removed so an
// inviter's room or display name cannot reorder the subject or sentence it is
// put in, and it is cut at 200 runes.
func clean(s string) string {
	if isClean(s) {
		return s
	}
	return cleanFull(s)
}

// cleanFull is clean without the isClean shortcut.
func cleanFull(s string) string {
	s = strings.Map(func(r rune) rune {
		if textnorm.IsBidiControl(r) {
			return -1
		}
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			return ' '
		}
		return r
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > 200 {
		s = string(r[:199]) + "…"
	}
	return s
}

// isClean reports whether clean(s) is s: valid UTF-8 of at most 200 runes
// with no control character, U+2028, U+2029 or bidi control, and no space
// but single ' ' between words. The mail worker cleans the same few names
// several times for every invite email, and nearly all are clean already.
func isClean(s string) bool {
	n := 0
	space := true // at the start, as after a space: a leading space is not clean
	for _, r := range s {
		n++
		switch {
		case r < 0x80:
			if r < 0x20 || r == 0x7f || r == ' ' && space {
				return false
			}
			space = r == ' '
			continue
		case r == utf8.RuneError, unicode.IsControl(r), unicode.IsSpace(r), r == '\u2028', r == '\u2029',
			textnorm.IsBidiControl(r):
			return false
		}
		space = false
	}
	return n <= 200 && (n == 0 || !space)
}

// webClient is the web client base for the invite's links: the invite's
// org.matrix.web_client_location only if its origin is on
// email.web_client_allowlist, else email.web_client_url. A link in the email
// never points where an inviter alone chose.
func webClient(c *config.Config, inv *Invite) string {
	if loc := inv.WebClientLocation; loc != "" {
		if u, err := url.Parse(loc); err == nil && (u.Scheme == "https" || u.Scheme == "http") && u.Host != "" && u.User == nil {
			origin := strings.ToLower(u.Scheme + "://" + u.Host)
			for _, a := range c.Email.WebClientAllowlist {
				au, err := url.Parse(a)
				if err != nil {
					continue
				}
				if strings.ToLower(au.Scheme+"://"+au.Host) == origin {
					u.RawQuery, u.Fragment = "", ""
					return strings.TrimRight(u.String(), "/")
				}
			}
		}
	}
	return strings.TrimRight(c.Email.WebClientURL, "/")
}

// SignURL is the link a client POSTs (with &mxid= appended) to have the
// invite signed with its ephemeral key: the v1 sign-ed25519 form sydent's
// emails carry, which matrix-js-sdk uses.
func SignURL(c *config.Config, inv *Invite) string {
	return c.BaseURL() + "/_matrix/identity/api/v1/sign-ed25519?token=" + url.QueryEscape(inv.Token) +
		"&private_key=" + url.QueryEscape(inv.EphemeralPrivate)
}

// DeclineURL is the invitee's link to decline the invite.
func DeclineURL(c *config.Config, inv *Invite) string {
	return c.BaseURL() + "/_herald/invites/decline?token=" + url.QueryEscape(inv.Token)
}

// OptOutURL is the invitee's link to ask for no further invites.
func OptOutURL(c *config.Config, inv *Invite) string {
	return c.BaseURL() + "/_herald/invites/optout?token=" + url.QueryEscape(inv.Token)
}

// JoinURL is the web client link that lets the invitee accept: the room with
// what the client needs (email, signurl, room name, inviter), as Element reads it.
func JoinURL(c *config.Config, inv *Invite) string {
	// The query is written as url.Values.Encode writes it (keys in order,
	// each value QueryEscaped), without its map and sort.
	var b strings.Builder
	b.Grow(512)
	b.WriteString(webClient(c, inv))
	b.WriteString("/#/room/")
	b.WriteString(strings.ReplaceAll(url.PathEscape(inv.RoomID), "%21", "!"))
	b.WriteString("?email=")
	b.WriteString(url.QueryEscape(inv.Address))
	b.WriteString("&inviter_name=")
	b.WriteString(url.QueryEscape(clean(inviterName(inv))))
	b.WriteString("&room_avatar_url=")
	b.WriteString(url.QueryEscape(clean(inv.RoomAvatarURL)))
	b.WriteString("&room_name=")
	b.WriteString(url.QueryEscape(clean(inv.RoomName)))
	if inv.RoomType != "" {
		b.WriteString("&room_type=")
		b.WriteString(url.QueryEscape(clean(inv.RoomType)))
	}
	b.WriteString("&signurl=")
	b.WriteString(url.QueryEscape(SignURL(c, inv)))
	return b.String()
}

func inviterName(inv *Invite) string {
	if n := clean(inv.SenderDisplayName); n != "" {
		return n
	}
	return inv.Sender
}

func roomDisplay(inv *Invite) string {
	switch {
	case clean(inv.RoomName) != "":
		return clean(inv.RoomName)
	case clean(inv.RoomAlias) != "":
		return clean(inv.RoomAlias)
	case inv.RoomType == "m.space":
		return "a space"
	}
	return "a room"
}

// templateData is what invite templates see: Herald's names, plus sydent's
// variable names (token, room_name, sender_display_name, web_client_location,
// ephemeral_private_key, bracketed_room_name, ...) and their _forhtml and
// _forurl variants, so sydent operators can port their templates. Any other
// string key the homeserver sent is there too; as it may be absent, reach it
// with {{index . "key"}} (a plain {{.key}} fails the start-up check). Every
// value from the request is cleaned of control characters; the HTML template
// escapes on output. need, when not nil, says which keys to fill (the
// templates' Uses or SubjectUses): the others are not computed.
func templateData(c *config.Config, inv *Invite, need func(key string) bool) map[string]any {
	// Sized once for every key: the map would otherwise regrow several
	// times per invite. Templates read far fewer (a subject two or three).
	size := 3*(len(inv.Extra)+len(sydentNames)) + 12
	if need == nil {
		need = func(string) bool { return true }
	} else {
		size = 16
	}
	d := make(map[string]any, size)
	set := func(k, khtml, kurl string, v func() string) {
		nk, nh, nu := need(k), need(khtml), need(kurl)
		if !nk && !nh && !nu {
			return
		}
		s := v()
		if nk {
			d[k] = s
		}
		if nh {
			d[khtml] = html.EscapeString(s)
		}
		if nu {
			d[kurl] = url.QueryEscape(s)
		}
	}
	// sydent's names from the request first, so Herald's own names win on
	// a clash.
	for k, v := range inv.Extra {
		var s string
		if err := jsonString(v, &s); err == nil && validVarName(k) {
			set(k, k+"_forhtml", k+"_forurl", func() string { return clean(s) })
		}
	}
	name := clean(inv.RoomName)
	display := clean(inv.SenderDisplayName)
	alias := clean(inv.RoomAlias)
	bracketedRoom, bracketedSender := "", inv.Sender
	if name != "" {
		bracketedRoom = "(" + name + ")"
	}
	if display != "" {
		bracketedSender = display + " (" + inv.Sender + ")"
	}
	str := func(v string) func() string { return func() string { return v } }
	values := [len(sydentNames)]func() string{
		str(inv.Medium), str(inv.Address), str(inv.Address),
		str(inv.RoomID), str(inv.Sender), str(inv.Token),
		str(alias), func() string { return clean(inv.RoomAvatarURL) },
		func() string { return clean(inv.RoomJoinRules) }, str(name), func() string { return clean(inv.RoomType) },
		str(display), func() string { return clean(inv.SenderAvatarURL) },
		str(inv.EphemeralPrivate), func() string { return webClient(c, inv) },
		str(bracketedRoom), str(bracketedSender),
		func() string { return SignURL(c, inv) },
	}
	for i, n := range sydentNames {
		set(n[0], n[1], n[2], values[i])
	}
	// Herald's names.
	put := func(k string, v func() any) {
		if need(k) {
			d[k] = v()
		}
	}
	put("brand", func() any { return c.Email.BrandName })
	put("inviter_name", func() any { return inviterName(inv) })
	put("inviter_full", func() any { return bracketedSender })
	put("room_display", func() any { return roomDisplay(inv) })
	put("room_is_space", func() any { return inv.RoomType == "m.space" })
	put("room_named", func() any { return name != "" || alias != "" })
	put("join_url", func() any { return JoinURL(c, inv) })
	put("decline_url", func() any { return DeclineURL(c, inv) })
	put("optout_url", func() any { return OptOutURL(c, inv) })
	put("homeserver", func() any { return inv.Homeserver })
	put("base_url", func() any { return c.BaseURL() })
	put("invite_id", func() any { return inv.ID })
	return d
}

// sydentNames are the names templateData sets from the invite, each with
// its _forhtml and _forurl variants, in the order of its values.
var sydentNames = func() (n [18][3]string) {
	for i, k := range []string{
		"medium", "address", "to",
		"room_id", "sender", "token",
		"room_alias", "room_avatar_url",
		"room_join_rules", "room_name", "room_type",
		"sender_display_name", "sender_avatar_url",
		"ephemeral_private_key", "web_client_location",
		"bracketed_room_name", "bracketed_verified_sender",
		"signurl",
	} {
		n[i] = [3]string{k, k + "_forhtml", k + "_forurl"}
	}
	return n
}()

func validVarName(k string) bool {
	if k == "" || len(k) > 64 {
		return false
	}
	for _, r := range k {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// renderMail renders inv's invite email. To, Headers and Ref are set; the
// caller sets Ref again once the invite has its id.
func (s *Service) renderMail(inv *Invite) (mailer.Message, error) {
	return s.renderInviteMail(s.mail.forInvite(inv), "invite", inv)
}

// renderInviteMail renders a mail of kind about inv with t: the invite
// email, or the notice for an invite an upstream vouched for.
func (s *Service) renderInviteMail(t *mailer.Templates, kind string, inv *Invite) (mailer.Message, error) {
	m, err := t.Render(templateData(s.cfg, inv, t.Uses))
	if err != nil {
		return m, err
	}
	m.To = inv.Address
	m.Kind = kind
	m.Ref = fmt.Sprintf("invite:%d", inv.ID)
	m.Headers = map[string]string{
		"List-Unsubscribe":         "<" + OptOutURL(s.cfg, inv) + ">",
		"Auto-Submitted":           "auto-generated",
		"X-Auto-Response-Suppress": "All",
	}
	return m, nil
}

// RenderMail renders the invite email for inv as it would be queued (for the
// admin console's "resend" and for tests).
func (s *Service) RenderMail(inv *Invite) (mailer.Message, error) { return s.renderMail(inv) }

// prepareMail prepares inv's invite email for the outbox. It is rendered
// when it is sent (renderQueued), from the invite record, which holds
// everything it shows: only its subject, which the console lists, is
// rendered now. A KIND.eml template is rendered and stored now, as its
// Message-ID and subject are its own.
func (s *Service) prepareMail(inv *Invite) (*mailer.Prepared, error) {
	t := s.mail.forInvite(inv)
	if t.IsRaw() {
		m, err := s.renderMail(inv)
		if err != nil {
			return nil, err
		}
		return s.opts.Mailer.Prepare(m)
	}
	subject, err := t.RenderSubject(templateData(s.cfg, inv, t.SubjectUses))
	if err != nil {
		return nil, err
	}
	m := mailer.Message{To: inv.Address, Kind: "invite", Ref: "invite:" + strconv.FormatUint(inv.ID, 10), Subject: subject}
	return s.opts.Mailer.PrepareRendered(m, binary.BigEndian.AppendUint32(nil, s.mailVersion(t)))
}

// mailVersion is the version of what an invite email is rendered with: the
// brand's templates and the settings its links and names come from. It is
// kept with a queued mail so that a change before the mail is sent is
// logged: the mail is rendered with what is in use when it is sent.
func (s *Service) mailVersion(t *mailer.Templates) uint32 {
	// The mail worker computes it for every invite email it sends: written
	// straight into the hash (what binary.Write and a string per value
	// wrote before, so the versions of queued mails still match).
	h := fnv.New32a()
	var v [4]byte
	binary.BigEndian.PutUint32(v[:], t.Version())
	h.Write(v[:])
	for _, v := range [...]string{s.cfg.BaseURL(), s.cfg.Email.BrandName, s.cfg.Email.WebClientURL} {
		_, _ = io.WriteString(h, v)
		h.Write([]byte{0})
	}
	for _, v := range s.cfg.Email.WebClientAllowlist {
		_, _ = io.WriteString(h, v)
		h.Write([]byte{0})
	}
	return h.Sum32()
}

// renderQueued is the outbox's Renderer for invite emails queued by
// prepareMail: it renders the email from the invite record as it is now.
// An invite that is gone, or whose token and keys were erased (it ended
// long ago), has nothing to send: mailer.ErrWithdrawn.
func (s *Service) renderQueued(ref string, data []byte) (mailer.Message, error) {
	n, ok := strings.CutPrefix(ref, "invite:")
	id, err := strconv.ParseUint(n, 10, 64)
	if !ok || err != nil {
		return mailer.Message{}, fmt.Errorf("invites: a queued invite email refers to %q", ref)
	}
	inv, err := s.Get(id)
	if errors.Is(err, ErrNotFound) {
		return mailer.Message{}, fmt.Errorf("%w: invite %d is gone", mailer.ErrWithdrawn, id)
	}
	if err != nil {
		return mailer.Message{}, err
	}
	if inv.Token == "" || inv.EphemeralPrivate == "" {
		return mailer.Message{}, fmt.Errorf("%w: invite %d no longer holds its token and keys", mailer.ErrWithdrawn, id)
	}
	if len(data) == 4 {
		if v := binary.BigEndian.Uint32(data); v != s.mailVersion(s.mail.forInvite(inv)) {
			if _, seen := s.changedMail.LoadOrStore(v, true); !seen {
				s.opts.Log.Warn("invite emails queued before a change of the email templates or settings are sent with the current ones",
					"invite", id)
			}
		}
	}
	return s.renderMail(inv)
}
