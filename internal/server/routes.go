package server

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/herald-im/herald/admin"
	"github.com/herald-im/herald/keys"
)

// routes lists Herald's whole public API surface in one place.
func (a *App) routes(e *echo.Echo) {
	id, inv := a.identity, a.invites
	pk := &keys.Handler{Ring: a.ring, Ephemeral: a.ephemeral}
	auth := id.Auth(false) // a valid access token
	gated := id.Auth(true) // ... that has accepted the current terms

	e.GET("/_matrix/identity/versions", versions)

	v2 := e.Group("/_matrix/identity/v2")
	v2.GET("", status)
	v2.GET("/pubkey/isvalid", pk.IsValid)
	v2.GET("/pubkey/ephemeral/isvalid", pk.EphemeralIsValid)
	v2.GET("/pubkey/:keyId", pk.GetPubkey)

	v2.POST("/account/register", id.Register)
	v2.GET("/account", id.GetAccount, auth)
	v2.POST("/account/logout", id.Logout, auth)
	v2.GET("/terms", id.GetTerms)
	v2.POST("/terms", id.PostTerms, auth)

	v2.GET("/hash_details", id.HashDetails, gated)
	v2.POST("/lookup", id.Lookup, gated)

	v2.POST("/validate/email/requestToken", id.RequestEmailToken, gated)
	v2.POST("/validate/email/submitToken", id.SubmitEmailToken, gated)
	v2.GET("/validate/email/submitToken", id.SubmitEmailTokenLink) // the link in the email: no token to give
	v2.GET("/3pid/getValidated3pid", id.GetValidated3pid, gated)
	v2.POST("/3pid/bind", id.Bind, gated)
	v2.POST("/3pid/unbind", id.Unbind) // session or X-Matrix signed request, checked inside

	v2.POST("/store-invite", inv.StoreInvite, gated)
	v2.POST("/sign-ed25519", inv.SignEd25519, gated)
	// The signurl in every invite email (sydent's form, which matrix-js-sdk
	// POSTs with &mxid= appended, unauthenticated): served even without compat.v1.
	e.POST("/_matrix/identity/api/v1/sign-ed25519", inv.SignEd25519V1)

	if a.cfg.Compat.V1 {
		// The legacy v1 API, unauthenticated, for Dendrite and older clients.
		v1 := e.Group("/_matrix/identity/api/v1")
		v1.GET("", status)
		v1.GET("/pubkey/isvalid", pk.IsValid)
		v1.GET("/pubkey/ephemeral/isvalid", pk.EphemeralIsValid)
		v1.GET("/pubkey/:keyId", pk.GetPubkey)
		v1.GET("/lookup", id.LookupV1)
		v1.POST("/bulk_lookup", id.BulkLookupV1)
		v1.POST("/store-invite", inv.StoreInviteV1)
		v1.POST("/validate/email/requestToken", id.RequestEmailToken)
		v1.POST("/validate/email/submitToken", id.SubmitEmailToken)
		v1.GET("/validate/email/submitToken", id.SubmitEmailTokenLink)
		v1.GET("/3pid/getValidated3pid", id.GetValidated3pid)
		v1.POST("/3pid/bind", id.BindV1)
		v1.POST("/3pid/unbind", id.Unbind)
	}

	// Liveness and readiness for load balancers and container health checks
	// (health.go; `herald healthcheck` asks them).
	e.GET("/_herald/health", a.Health)
	e.GET("/_herald/ready", a.Ready)
	// The key_validity_urls of invites imported from sydent (sydent.go).
	a.sydentRoutes(e, pk)

	// The invitee's pages linked from invite emails (GET confirms, POST acts).
	e.GET("/_herald/invites/decline", inv.DeclinePage)
	e.POST("/_herald/invites/decline", inv.DeclineAction)
	e.GET("/_herald/invites/optout", inv.OptOutPage)
	e.POST("/_herald/invites/optout", inv.OptOutAction)

	// No smtp.host: the dev mailbox (validation codes, invite links) is a
	// console page behind the admin login (/admin/mailbox), nothing else.

	if a.admin != nil && a.cfg.Admin.Listen == "" {
		// The operator console and its JSON API (admin/routes.go lists its
		// routes); with admin.listen set it is served there instead.
		e.Any("/admin", a.serveConsole)
		e.Any("/admin/*", a.serveConsole)
	}
}

// serveConsole hands a request to the console with the client address this
// server determined, which the console's login limits count by. Without an
// IPExtractor (trusted proxies) Echo's RealIP would believe any
// X-Forwarded-For, so the console then uses the TCP peer itself.
func (a *App) serveConsole(c echo.Context) error {
	r := c.Request()
	if c.Echo().IPExtractor != nil {
		r = admin.WithClientIP(r, c.RealIP())
	}
	a.admin.ServeHTTP(c.Response(), r)
	return nil
}

func versions(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string][]string{"versions": {"v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12", "v1.13", "v1.14", "v1.15", "v1.16", "v1.17", "v1.18", "v1.19"}})
}

func status(c echo.Context) error { return c.JSON(http.StatusOK, struct{}{}) }
