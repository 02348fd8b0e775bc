package invites

import (
	"bytes"
	"embed"
	"errors"
	htmltemplate "html/template"
	"net/http"

	"github.com/labstack/echo/v4"
)

// The invitee's pages, linked from the invite email:
//
//	/_herald/invites/decline?token=  decline this invitation (or undo that)
//	/_herald/invites/optout?token=   no more invitations to this address from
//	                                 the sender, or from anyone (or undo that)
//
// GET shows a confirmation form; only POST acts. The secret invite token in
// the form is what authorises the action, so a third-party site cannot forge
// the POST (it does not know the token): no separate CSRF token is needed.

//go:embed templates/pages/*.html
var pagesFS embed.FS

// Parsed once at start-up: a broken embedded page panics at boot.
var actionPage = htmltemplate.Must(htmltemplate.New("invite_action.html").Option("missingkey=error").
	ParseFS(pagesFS, "templates/pages/invite_action.html"))

type pageForm struct {
	Action    string
	Token     string
	Fields    map[string]string
	Button    string
	Secondary bool
}

type pageView struct {
	Brand      string
	Title      string
	Paragraphs []string
	Forms      []pageForm
	Note       string
}

const (
	declinePath = "/_herald/invites/decline"
	optoutPath  = "/_herald/invites/optout"
)

func (s *Service) renderPage(c echo.Context, status int, v pageView) error {
	v.Brand = s.cfg.Email.BrandName
	if v.Brand == "" {
		v.Brand = "Herald"
	}
	var b bytes.Buffer
	if err := actionPage.Execute(&b, v); err != nil {
		return err
	}
	h := c.Response().Header()
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	return c.HTMLBlob(status, b.Bytes())
}

func pageToken(c echo.Context) string {
	if t := c.FormValue("token"); t != "" {
		return t
	}
	return c.QueryParam("token")
}

func (s *Service) invalidLink(c echo.Context) error {
	return s.renderPage(c, http.StatusNotFound, pageView{Title: "This link is no longer valid",
		Paragraphs: []string{"The invitation it belonged to is unknown, or its details were erased after it ended."}})
}

func inviteSummary(inv *Invite) string {
	return inviterName(inv) + " invited you to " + roomDisplay(inv) + "."
}

// DeclinePage serves GET /_herald/invites/decline?token=: a confirmation form.
func (s *Service) DeclinePage(c echo.Context) error {
	inv, err := s.ByToken(pageToken(c))
	if errors.Is(err, ErrNotFound) {
		return s.invalidLink(c)
	} else if err != nil {
		return err
	}
	if !inv.Pending(s.opts.Now()) {
		v := pageView{Title: "This invitation is " + pageStateWord(inv.State), Paragraphs: []string{inviteSummary(inv)}}
		if inv.State == StateDeclined && !inv.Expired(s.opts.Now()) {
			v.Paragraphs = append(v.Paragraphs, "You declined it. You can accept it again:")
			v.Forms = []pageForm{{Action: declinePath, Token: inv.Token, Fields: map[string]string{"action": "undo"}, Button: "Undo: keep the invitation"}}
		}
		return s.renderPage(c, http.StatusOK, v)
	}
	return s.renderPage(c, http.StatusOK, pageView{
		Title:      "Decline this invitation?",
		Paragraphs: []string{inviteSummary(inv), "If you decline, the invitation can no longer be accepted, and nothing is sent to the room."},
		Forms:      []pageForm{{Action: declinePath, Token: inv.Token, Fields: map[string]string{"action": "decline"}, Button: "Decline the invitation"}},
		Note:       "To stop receiving invitations altogether, use the other link in the email.",
	})
}

// DeclineAction serves POST /_herald/invites/decline (token, action=decline|undo).
func (s *Service) DeclineAction(c echo.Context) error {
	undo := c.FormValue("action") == "undo"
	inv, err := s.Decline(pageToken(c), undo)
	switch {
	case errors.Is(err, ErrNotFound):
		return s.invalidLink(c)
	case errors.Is(err, ErrState):
		return s.renderPage(c, http.StatusConflict, pageView{Title: "Nothing to do",
			Paragraphs: []string{"This invitation can no longer be changed: it was accepted, withdrawn or has expired."}})
	case err != nil:
		return err
	}
	if undo {
		return s.renderPage(c, http.StatusOK, pageView{Title: "The invitation is active again",
			Paragraphs: []string{inviteSummary(inv), "You can accept it with the button in the email."}})
	}
	return s.renderPage(c, http.StatusOK, pageView{
		Title:      "You declined the invitation",
		Paragraphs: []string{inviteSummary(inv), "It can no longer be accepted. Changed your mind? Until it would have expired, you can undo this:"},
		Forms:      []pageForm{{Action: declinePath, Token: inv.Token, Fields: map[string]string{"action": "undo"}, Button: "Undo: keep the invitation", Secondary: true}},
	})
}

// OptOutPage serves GET /_herald/invites/optout?token=: a choice of opt-outs.
func (s *Service) OptOutPage(c echo.Context) error {
	inv, err := s.ByToken(pageToken(c))
	if errors.Is(err, ErrNotFound) {
		return s.invalidLink(c)
	} else if err != nil {
		return err
	}
	return s.renderPage(c, http.StatusOK, pageView{
		Title:      "Stop invitations to this address",
		Paragraphs: []string{inviteSummary(inv), "Choose which invitations this email address should no longer receive through this identity server:"},
		Forms: []pageForm{
			{Action: optoutPath, Token: inv.Token, Fields: map[string]string{"scope": "sender", "action": "optout"}, Button: "No more invitations from " + inviterName(inv)},
			{Action: optoutPath, Token: inv.Token, Fields: map[string]string{"scope": "anyone", "action": "optout"}, Button: "No more invitations from anyone", Secondary: true},
		},
		Note: "This invitation itself stays open; decline it with the other link if you wish.",
	})
}

// OptOutAction serves POST /_herald/invites/optout (token, scope=sender|anyone, action=optout|undo).
func (s *Service) OptOutAction(c echo.Context) error {
	anyone := c.FormValue("scope") == "anyone"
	undo := c.FormValue("action") == "undo"
	inv, err := s.SetOptOut(pageToken(c), anyone, !undo)
	if errors.Is(err, ErrNotFound) {
		return s.invalidLink(c)
	} else if err != nil {
		return err
	}
	scope := map[string]string{"scope": "sender"}
	who := "from " + inviterName(inv)
	if anyone {
		scope["scope"], who = "anyone", "from anyone"
	}
	if undo {
		return s.renderPage(c, http.StatusOK, pageView{Title: "Invitations are welcome again",
			Paragraphs: []string{"This email address can receive invitations " + who + " again."}})
	}
	undoFields := map[string]string{"scope": scope["scope"], "action": "undo"}
	return s.renderPage(c, http.StatusOK, pageView{
		Title:      "Done: no more invitations " + who,
		Paragraphs: []string{"This email address will not receive invitations " + who + " through this identity server. Any new invitation is refused and no email is sent.", "To undo this, use this button (or the same link in the email, while it is still valid):"},
		Forms:      []pageForm{{Action: optoutPath, Token: inv.Token, Fields: undoFields, Button: "Undo: accept invitations " + who + " again", Secondary: true}},
	})
}

func pageStateWord(state string) string {
	switch state {
	case StateResolved:
		return "already accepted"
	case StateExpired:
		return "expired"
	case StateRevoked:
		return "withdrawn"
	case StateDeclined:
		return "declined"
	}
	return state
}
