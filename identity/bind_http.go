package identity

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/herald-im/herald/federation"
	"github.com/herald-im/herald/matrix"
	"github.com/herald-im/herald/store"
)

// Bind serves POST /v2/3pid/bind: the account's own user binds the address
// of a validated session, and gets the signed association back. Pending
// invites are resolved by the bind hooks, in the same transaction.
func (s *Service) Bind(c echo.Context) error { return s.bindHTTP(c, true) }

// BindV1 serves POST /api/v1/3pid/bind (no account: the homeserver proxies
// for its user, as in the v1 API).
func (s *Service) BindV1(c echo.Context) error { return s.bindHTTP(c, false) }

func (s *Service) bindHTTP(c echo.Context, needAccount bool) error {
	var req struct {
		SID          string `json:"sid"`
		ClientSecret string `json:"client_secret"`
		MXID         string `json:"mxid"`
	}
	if err := decodeBody(c, &req); err != nil {
		return err
	}
	if err := matrix.Require("sid", req.SID, "client_secret", req.ClientSecret, "mxid", req.MXID); err != nil {
		return err
	}
	if !matrix.ValidUserID(req.MXID) {
		return matrix.InvalidParam("mxid is not a Matrix user ID")
	}
	if needAccount {
		a := AccountFrom(c)
		if a == nil || a.UserID != req.MXID {
			return matrix.ForbiddenUnauthorized("mxid must be the user ID of this account")
		}
	}
	se, err := s.ValidatedSession(req.SID, req.ClientSecret)
	if err != nil {
		return err
	}
	now := s.opts.Now().UTC().Truncate(1e6) // milliseconds, as the association states them
	b := Binding{Medium: se.Medium, Address: se.Address, MXID: req.MXID, TS: now, NotBefore: now, NotAfter: now.AddDate(100, 0, 0)}
	if err := s.bindingWrite(c.Request().Context(), func(tx *store.Tx) error { return s.PutBinding(tx, b) }); err != nil {
		return err
	}
	s.opts.Log.Info("address bound", "address", matrix.RedactEmail(b.Address), "mxid", b.MXID)
	assoc, err := s.SignedAssociation(b)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, assoc)
}

// keyFetchRetryMS is the retry_after_ms of an unbind refused because the
// homeserver's keys could not be fetched yet (the fetch limits).
const keyFetchRetryMS = 1000

// Unbind serves POST /3pid/unbind (v2 and v1). It is authorised either by
// the session that validated the address (sid + client_secret) or by a
// request signed (X-Matrix) by the homeserver of mxid. Only a binding to that
// mxid is removed; answering {} whether or not there was one.
func (s *Service) Unbind(c echo.Context) error {
	body, err := matrix.ReadBody(c)
	if err != nil {
		return err
	}
	var req struct {
		SID          string `json:"sid"`
		ClientSecret string `json:"client_secret"`
		MXID         string `json:"mxid"`
		Threepid     *struct {
			Medium  string `json:"medium"`
			Address string `json:"address"`
		} `json:"threepid"`
	}
	if err := matrix.DecodeJSONBytes(body, &req); err != nil {
		return err
	}
	if req.Threepid == nil {
		return matrix.MissingParams("Missing parameters: threepid")
	}
	if err := matrix.Require("mxid", req.MXID, "threepid.medium", req.Threepid.Medium, "threepid.address", req.Threepid.Address); err != nil {
		return err
	}
	if req.Threepid.Medium != "email" {
		return matrix.Unrecognized("Only the email medium is supported")
	}
	address, err := NormalizeEmail(req.Threepid.Address)
	if err != nil {
		return err
	}
	auth := c.Request().Header.Get("Authorization")
	switch {
	case strings.HasPrefix(auth, "X-Matrix "):
		v, err := s.validator()
		if err != nil {
			return err
		}
		if v.opts.Keys == nil {
			return matrix.Forbidden("Signed unbind requests are not supported")
		}
		a, err := ParseXMatrix(auth)
		if err != nil {
			s.opts.Log.Warn("signed unbind refused", "err", err)
			return matrix.Forbidden("Invalid homeserver signature")
		}
		// Only the mxid's own homeserver may unbind it: compare before any
		// key is fetched, so that a request naming an arbitrary origin makes
		// Herald neither resolve nor call that origin nor cache anything.
		if !strings.EqualFold(a.Origin, matrix.ServerName(req.MXID)) {
			return matrix.Forbidden("The request is not signed by the homeserver of mxid")
		}
		if _, err := a.Verify(c.Request().Context(), v.opts.Keys, c.Request().Method, c.Request().RequestURI, body, v.ownNames()...); err != nil {
			if errors.Is(err, federation.ErrKeyFetchLimited) {
				// Not the signature's fault: the homeserver may try again.
				return matrix.LimitExceeded(keyFetchRetryMS).Because(err)
			}
			return matrix.Forbidden("Invalid homeserver signature").Because(err)
		}
	case req.SID != "" && req.ClientSecret != "":
		se, err := s.ValidatedSession(req.SID, req.ClientSecret)
		if err != nil {
			if me, ok := matrix.AsError(err); ok && me.Status < 500 {
				return matrix.Forbidden("%s", me.Message)
			}
			return err
		}
		if se.Medium != req.Threepid.Medium || se.Address != address {
			return matrix.Forbidden("The session did not validate this address")
		}
	default:
		return matrix.Forbidden("Unbinding needs sid and client_secret, or a request signed by the homeserver")
	}
	removed := false
	err = s.bindingWrite(c.Request().Context(), func(tx *store.Tx) error {
		b, err := s.BindingTx(tx, "email", address)
		if err != nil || b == nil || b.MXID != req.MXID {
			return err
		}
		removed = true
		return s.DeleteBinding(tx, "email", address)
	})
	if err != nil {
		return err
	}
	if removed {
		s.opts.Log.Info("address unbound", "address", matrix.RedactEmail(address), "mxid", req.MXID)
	}
	return c.JSON(http.StatusOK, json.RawMessage(`{}`))
}

// ownNames are the names a homeserver may sign as this identity server's
// (Synapse signs the id_server of the binding: the host, with any port, the
// client used): server_name, then the host of the public base URL.
func (v *validation) ownNames() []string {
	names := []string{v.opts.ServerName}
	if u, err := url.Parse(v.opts.BaseURL); err == nil && u.Host != "" {
		names = append(names, u.Host)
		if u.Port() == "" || (u.Scheme == "https" && u.Port() == "443") {
			names = append(names, u.Hostname())
		}
	}
	return names
}
