package identity

import (
	"github.com/labstack/echo/v4"

	"github.com/herald-im/herald/matrix"
)

// Handlers not built yet; each file that implements one removes it here.

func notYet(echo.Context) error { return matrix.NotFoundRoute() }

func (s *Service) RequestEmailToken(c echo.Context) error    { return notYet(c) }
func (s *Service) SubmitEmailToken(c echo.Context) error     { return notYet(c) }
func (s *Service) SubmitEmailTokenLink(c echo.Context) error { return notYet(c) }
func (s *Service) GetValidated3pid(c echo.Context) error     { return notYet(c) }
func (s *Service) Bind(c echo.Context) error                 { return notYet(c) }
func (s *Service) Unbind(c echo.Context) error               { return notYet(c) }
