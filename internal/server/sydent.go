package server

import (
	"fmt"

	"github.com/labstack/echo/v4"

	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/sydent"
)

// sydentRoutes serves the key_validity_urls an imported sydent put into
// m.room.third_party_invite events (always under /_matrix/identity/api/v1,
// after client_http_base's path), so homeservers checking its invites get
// an answer whether compat.v1 is on or not. Nothing is added without an
// import. The import record is read once, in New (loadSydentImport), so
// building the routes never reads the database.
func (a *App) sydentRoutes(e *echo.Echo, pk *keys.Handler) {
	imp := a.sydentImport
	if imp == nil {
		return
	}
	prefixes := []string{imp.ValidityPrefix}
	if imp.ValidityPrefix != "" {
		// A proxy may also strip client_http_base's path.
		prefixes = append(prefixes, "")
	}
	for _, p := range prefixes {
		if p == "" && a.cfg.Compat.V1 {
			continue // the v1 API already serves these
		}
		g := e.Group(p + "/_matrix/identity/api/v1")
		g.GET("/pubkey/isvalid", pk.IsValid)
		g.GET("/pubkey/ephemeral/isvalid", pk.EphemeralIsValid)
		g.GET("/pubkey/:keyId", pk.GetPubkey)
	}
}

// loadSydentImport reads the record `herald import sydent` left, if any.
func (a *App) loadSydentImport() error {
	imp, err := sydent.ImportedDeployment(a.db)
	if err != nil {
		return fmt.Errorf("reading the sydent import record: %w", err)
	}
	a.sydentImport = imp
	return nil
}
