package identity

import (
	"github.com/labstack/echo/v4"

	"github.com/herald-im/herald/matrix"
)

// Handlers not built yet; each file that implements one removes it here.

func notYet(echo.Context) error { return matrix.NotFoundRoute() }
