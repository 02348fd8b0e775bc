package admin

import (
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/herald-im/herald/invites"
)

// HTML pages and form actions. Each action answers with a redirect (post,
// redirect, get) to the page it came from, carrying a fixed notice code.

func done(c echo.Context, to, notice string) error {
	sep := "?"
	if strings.Contains(to, "?") {
		sep = "&"
	}
	return c.Redirect(http.StatusSeeOther, to+sep+"ok="+notice)
}

func (h *Handler) dashboardPage(c echo.Context) error {
	return h.render(c, http.StatusOK, "dashboard", "Dashboard", "dashboard", h.loadDashboard(c.Request().Context()))
}

func (h *Handler) invitesPage(c echo.Context) error {
	d, err := h.listInvites(c)
	if err != nil {
		var he *httpError
		if !asHTTP(err, &he) || he.Status != http.StatusBadRequest {
			return err
		}
		d.Problem = he.Msg // show the form again with the reason
		d.States = invites.DisplayStates
	}
	return h.render(c, http.StatusOK, "invites", "Invites", "invites", d)
}

func (h *Handler) invitePage(c echo.Context) error {
	d, err := h.loadInvite(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	return h.render(c, http.StatusOK, "invite", "Invite "+d.Invite.ID, "invites", d)
}

func (h *Handler) revokeInviteForm(c echo.Context) error {
	id := c.Param("id")
	if err := h.revokeInvite(c, id); err != nil {
		return err
	}
	return done(c, Prefix+"/invites/"+id, "revoked")
}

func (h *Handler) resendInviteForm(c echo.Context) error {
	id := c.Param("id")
	if err := h.resendInvite(c, id); err != nil {
		return err
	}
	return done(c, Prefix+"/invites/"+id, "resent")
}

func (h *Handler) outboxPage(c echo.Context) error {
	q, err := h.mailQueue()
	if err != nil {
		return err
	}
	d, err := h.listQueue(c, q)
	if err != nil {
		return err
	}
	if s, err := h.opts.Outbox.MailStats(c.Request().Context()); err == nil {
		d.Stats = &s
	}
	return h.render(c, http.StatusOK, "outbox", "Outbox", "outbox", d)
}

func (h *Handler) mailPage(c echo.Context) error {
	if h.opts.Outbox == nil {
		return errUnavailable("The outbox")
	}
	m, err := h.opts.Outbox.GetMail(c.Request().Context(), c.Param("id"))
	if err != nil {
		return h.fromService(err)
	}
	return h.render(c, http.StatusOK, "mail", "Mail "+m.ID, "outbox", m)
}

func (h *Handler) queueForm(c echo.Context, q *consoleQueue, err error, action, page string) error {
	if err != nil {
		return err
	}
	id := c.Param("id")
	if err := h.queueAction(c, q, action, id); err != nil {
		return err
	}
	back := safeBack(c.FormValue("back"), Prefix+"/"+page+"/"+id)
	if action == "drop" && back == Prefix+"/"+page+"/"+id {
		back = Prefix + "/" + page
	}
	return done(c, back, map[string]string{"retry": "retried", "drop": "dropped"}[action])
}

func (h *Handler) retryMailForm(c echo.Context) error {
	q, err := h.mailQueue()
	return h.queueForm(c, q, err, "retry", "outbox")
}

func (h *Handler) dropMailForm(c echo.Context) error {
	q, err := h.mailQueue()
	return h.queueForm(c, q, err, "drop", "outbox")
}

// bulkForm handles the list page's one form: a row's own button (retry=ID or
// drop=ID) or a bulk button (bulk=retry|drop) over the ticked ids.
func (h *Handler) bulkForm(c echo.Context, q *consoleQueue, page string) error {
	form, err := c.FormParams()
	if err != nil {
		return errStatus(http.StatusBadRequest, "Bad form")
	}
	back := safeBack(form.Get("back"), Prefix+"/"+page)
	switch {
	case form.Get("retry") != "":
		err = h.queueAction(c, q, "retry", form.Get("retry"))
	case form.Get("drop") != "":
		err = h.queueAction(c, q, "drop", form.Get("drop"))
	default:
		_, err = h.bulk(c, q, form.Get("bulk"), form["ids"])
	}
	if err != nil {
		return err
	}
	return done(c, back, "bulk")
}

func (h *Handler) bulkMailForm(c echo.Context) error {
	q, err := h.mailQueue()
	if err != nil {
		return err
	}
	return h.bulkForm(c, q, "outbox")
}

func (h *Handler) deliveriesPage(c echo.Context) error {
	q, err := h.deliveryQueue()
	if err != nil {
		return err
	}
	d, err := h.listQueue(c, q)
	if err != nil {
		return err
	}
	if s, err := h.opts.Deliveries.DeliveryStats(c.Request().Context()); err == nil {
		d.Stats = &s
	}
	return h.render(c, http.StatusOK, "deliveries", "Deliveries", "deliveries", d)
}

func (h *Handler) deliveryPage(c echo.Context) error {
	if h.opts.Deliveries == nil {
		return errUnavailable("The delivery queue")
	}
	d, err := h.opts.Deliveries.GetDelivery(c.Request().Context(), c.Param("id"))
	if err != nil {
		return h.fromService(err)
	}
	return h.render(c, http.StatusOK, "delivery", "Delivery "+d.ID, "deliveries", d)
}

func (h *Handler) retryDeliveryForm(c echo.Context) error {
	q, err := h.deliveryQueue()
	return h.queueForm(c, q, err, "retry", "deliveries")
}

func (h *Handler) dropDeliveryForm(c echo.Context) error {
	q, err := h.deliveryQueue()
	return h.queueForm(c, q, err, "drop", "deliveries")
}

func (h *Handler) bulkDeliveryForm(c echo.Context) error {
	q, err := h.deliveryQueue()
	if err != nil {
		return err
	}
	return h.bulkForm(c, q, "deliveries")
}

func (h *Handler) bindingsPage(c echo.Context) error {
	d, err := h.lookupAddress(c.Request().Context(), c.QueryParam("address"))
	if err != nil {
		var he *httpError
		if !asHTTP(err, &he) || he.Status != http.StatusBadRequest {
			return err
		}
		d.Problem, d.Searched = he.Msg, false
	}
	return h.render(c, http.StatusOK, "bindings", "Bindings", "bindings", d)
}

func (h *Handler) unbindForm(c echo.Context) error {
	addr := c.FormValue("address")
	if err := h.unbind(c, addr); err != nil {
		return err
	}
	return done(c, Prefix+"/bindings?address="+urlQueryEscape(addr), "unbound")
}

func (h *Handler) eraseConfirmPage(c echo.Context) error {
	d, err := h.lookupAddress(c.Request().Context(), c.QueryParam("address"))
	if err != nil {
		return err
	}
	if !d.Searched {
		return c.Redirect(http.StatusSeeOther, Prefix+"/bindings")
	}
	return h.render(c, http.StatusOK, "erase", "Erase an address", "bindings", d)
}

func (h *Handler) eraseForm(c echo.Context) error {
	if _, err := h.erase(c, c.FormValue("address"), c.FormValue("confirm")); err != nil {
		return err
	}
	return done(c, Prefix+"/bindings", "erased")
}

func (h *Handler) keysPage(c echo.Context) error {
	rows, err := h.keyRows()
	if err != nil {
		return err
	}
	return h.render(c, http.StatusOK, "keys", "Signing keys", "keys", rows)
}

func (h *Handler) rotateKeyForm(c echo.Context) error {
	if _, err := h.rotateKey(c); err != nil {
		return err
	}
	return done(c, Prefix+"/keys", "rotated")
}

func (h *Handler) retireKeyForm(c echo.Context) error {
	if err := h.retireKey(c, c.FormValue("id")); err != nil {
		return err
	}
	return done(c, Prefix+"/keys", "retired")
}

func (h *Handler) settingsPage(c echo.Context) error {
	return h.render(c, http.StatusOK, "settings", "Settings", "settings", settingsData{Rows: settingsRows(h.opts.Config), Upstreams: h.upstreams()})
}

type auditData struct {
	Entries []AuditEntry
	PrevURL string
	NextURL string
}

func (h *Handler) auditPage(c echo.Context) error {
	p := pageParam(c)
	es, err := h.Audit(101, (p-1)*100)
	if err != nil {
		return err
	}
	d := auditData{Entries: es}
	if len(es) > 100 {
		d.Entries, d.NextURL = es[:100], withPage(c, p+1)
	}
	if p > 1 {
		d.PrevURL = withPage(c, p-1)
	}
	return h.render(c, http.StatusOK, "audit", "Audit log", "audit", d)
}

func (h *Handler) mailboxPage(c echo.Context) error {
	if h.opts.Mailbox == nil {
		return errUnavailable("The dev mailbox (it exists only while no smtp.host is configured)")
	}
	ms, err := h.opts.Mailbox.ListDevMail(c.Request().Context())
	if err != nil {
		return h.fromService(err)
	}
	return h.render(c, http.StatusOK, "mailbox", "Dev mailbox", "mailbox", ms)
}

func (h *Handler) devMailPage(c echo.Context) error {
	if h.opts.Mailbox == nil {
		return errUnavailable("The dev mailbox")
	}
	m, err := h.opts.Mailbox.ReadDevMail(c.Request().Context(), c.Param("id"))
	if err != nil {
		return h.fromService(err)
	}
	return h.render(c, http.StatusOK, "devmail", m.Subject, "mailbox", m)
}

// devMailHTML serves a mail's HTML part for the sandboxed frame of its page:
// no scripts, no network, only inline styles and embedded images.
func (h *Handler) devMailHTML(c echo.Context) error {
	if h.opts.Mailbox == nil {
		return errUnavailable("The dev mailbox")
	}
	m, err := h.opts.Mailbox.ReadDevMail(c.Request().Context(), c.Param("id"))
	if err != nil {
		return h.fromService(err)
	}
	hd := c.Response().Header()
	hd.Set("Content-Security-Policy", "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'")
	hd.Set("X-Frame-Options", "SAMEORIGIN")
	return c.HTMLBlob(http.StatusOK, []byte(m.HTML))
}
