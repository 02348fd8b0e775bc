package admin

import (
	"bytes"
	"encoding/json"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/matrix"
)

// The JSON admin API: the same operations as the pages, documented in
// docs/admin.md. Errors are {"error": "..."} with a fitting status.

// decodeBody reads a JSON body with the Matrix API's reader (the same size
// limit) and refuses unknown fields, so a misspelt key in an operator's
// script is an error rather than ignored. An empty body leaves v as it is.
func decodeBody(c echo.Context, v any) error {
	body, err := matrix.ReadBody(c)
	if me, ok := matrix.AsError(err); ok {
		return errStatus(me.Status, "%s", me.Message)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errStatus(http.StatusBadRequest, "Bad JSON body: %v", err)
	}
	return nil
}

type okAnswer struct {
	OK bool `json:"ok"`
}

func (h *Handler) apiDashboard(c echo.Context) error {
	return c.JSON(http.StatusOK, h.loadDashboard(c.Request().Context()))
}

func (h *Handler) apiInvites(c echo.Context) error {
	d, err := h.listInvites(c)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, d)
}

func (h *Handler) apiInvite(c echo.Context) error {
	d, err := h.loadInvite(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, d)
}

func (h *Handler) apiRevokeInvite(c echo.Context) error {
	if err := h.revokeInvite(c, c.Param("id")); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, okAnswer{true})
}

func (h *Handler) apiResendInvite(c echo.Context) error {
	if err := h.resendInvite(c, c.Param("id")); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, okAnswer{true})
}

func (h *Handler) apiQueueList(c echo.Context, q *consoleQueue, err error) error {
	if err != nil {
		return err
	}
	d, err := h.listQueue(c, q)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, d)
}

func (h *Handler) apiOutbox(c echo.Context) error {
	q, err := h.mailQueue()
	return h.apiQueueList(c, q, err)
}

func (h *Handler) apiMail(c echo.Context) error {
	if h.opts.Outbox == nil {
		return errUnavailable("The outbox")
	}
	m, err := h.opts.Outbox.GetMail(c.Request().Context(), c.Param("id"))
	if err != nil {
		return h.fromService(err)
	}
	return c.JSON(http.StatusOK, m)
}

func (h *Handler) apiQueueAction(c echo.Context, q *consoleQueue, err error, action string) error {
	if err != nil {
		return err
	}
	if err := h.queueAction(c, q, action, c.Param("id")); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, okAnswer{true})
}

type bulkRequest struct {
	Action string   `json:"action"` // retry or drop
	IDs    []string `json:"ids"`
}

type bulkAnswer struct {
	Done  int    `json:"done"`
	Error string `json:"error,omitempty"`
}

func (h *Handler) apiBulk(c echo.Context, q *consoleQueue, err error) error {
	if err != nil {
		return err
	}
	var req bulkRequest
	if err := decodeBody(c, &req); err != nil {
		return err
	}
	if req.Action != "retry" && req.Action != "drop" {
		return errStatus(http.StatusBadRequest, "action must be retry or drop")
	}
	n, err := h.bulk(c, q, req.Action, req.IDs)
	ans := bulkAnswer{Done: n}
	if err != nil {
		if n == 0 {
			return err
		}
		ans.Error = err.Error()
	}
	return c.JSON(http.StatusOK, ans)
}

func (h *Handler) apiRetryMail(c echo.Context) error {
	q, err := h.mailQueue()
	return h.apiQueueAction(c, q, err, "retry")
}

func (h *Handler) apiDropMail(c echo.Context) error {
	q, err := h.mailQueue()
	return h.apiQueueAction(c, q, err, "drop")
}

func (h *Handler) apiBulkMail(c echo.Context) error {
	q, err := h.mailQueue()
	return h.apiBulk(c, q, err)
}

func (h *Handler) apiDeliveries(c echo.Context) error {
	q, err := h.deliveryQueue()
	return h.apiQueueList(c, q, err)
}

func (h *Handler) apiDelivery(c echo.Context) error {
	if h.opts.Deliveries == nil {
		return errUnavailable("The delivery queue")
	}
	d, err := h.opts.Deliveries.GetDelivery(c.Request().Context(), c.Param("id"))
	if err != nil {
		return h.fromService(err)
	}
	return c.JSON(http.StatusOK, d)
}

func (h *Handler) apiRetryDelivery(c echo.Context) error {
	q, err := h.deliveryQueue()
	return h.apiQueueAction(c, q, err, "retry")
}

func (h *Handler) apiDropDelivery(c echo.Context) error {
	q, err := h.deliveryQueue()
	return h.apiQueueAction(c, q, err, "drop")
}

func (h *Handler) apiBulkDelivery(c echo.Context) error {
	q, err := h.deliveryQueue()
	return h.apiBulk(c, q, err)
}

func (h *Handler) apiBinding(c echo.Context) error {
	if c.QueryParam("address") == "" {
		return errStatus(http.StatusBadRequest, "address is required")
	}
	d, err := h.lookupAddress(c.Request().Context(), c.QueryParam("address"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, d)
}

type addressRequest struct {
	Address string `json:"address"`
	Confirm string `json:"confirm,omitempty"`
}

func (h *Handler) apiUnbind(c echo.Context) error {
	var req addressRequest
	if err := decodeBody(c, &req); err != nil {
		return err
	}
	if err := h.unbind(c, req.Address); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, okAnswer{true})
}

func (h *Handler) apiErase(c echo.Context) error {
	var req addressRequest
	if err := decodeBody(c, &req); err != nil {
		return err
	}
	res, err := h.erase(c, req.Address, req.Confirm)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, res)
}

func (h *Handler) apiKeys(c echo.Context) error {
	rows, err := h.keyRows()
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"keys": rows})
}

func (h *Handler) apiRotateKey(c echo.Context) error {
	k, err := h.rotateKey(c)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]string{"id": k.ID, "public_key": k.PublicBase64()})
}

func (h *Handler) apiRetireKey(c echo.Context) error {
	var req struct {
		ID string `json:"id"`
	}
	if err := decodeBody(c, &req); err != nil {
		return err
	}
	if err := h.retireKey(c, req.ID); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, okAnswer{true})
}

func (h *Handler) apiSettings(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]any{"settings": settingsRows(h.opts.Config), "upstreams": h.upstreams()})
}

func (h *Handler) apiAudit(c echo.Context) error {
	p := pageParam(c)
	es, err := h.Audit(100, (p-1)*100)
	if err != nil {
		return err
	}
	if es == nil {
		es = []AuditEntry{}
	}
	return c.JSON(http.StatusOK, map[string]any{"entries": es, "page": p})
}

func (h *Handler) apiMailbox(c echo.Context) error {
	if h.opts.Mailbox == nil {
		return errUnavailable("The dev mailbox")
	}
	ms, err := h.opts.Mailbox.ListDevMail(c.Request().Context())
	if err != nil {
		return h.fromService(err)
	}
	for i := range ms {
		ms[i].Text, ms[i].HTML = "", ""
	}
	if ms == nil {
		ms = []mailer.DevMailView{}
	}
	return c.JSON(http.StatusOK, map[string]any{"mails": ms})
}

func (h *Handler) apiDevMail(c echo.Context) error {
	if h.opts.Mailbox == nil {
		return errUnavailable("The dev mailbox")
	}
	m, err := h.opts.Mailbox.ReadDevMail(c.Request().Context(), c.Param("id"))
	if err != nil {
		return h.fromService(err)
	}
	return c.JSON(http.StatusOK, m)
}
