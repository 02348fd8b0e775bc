// Package invites owns third-party invites: store-invite, the invite email,
// signing for the invitee, and (later) resolution on bind.
package invites

import (
	"log/slog"
	"time"

	"github.com/labstack/echo/v4"
	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/matrix"
)

// Options configure a Service.
type Options struct {
	Config    *config.Config
	Identity  *identity.Service
	Ring      *keys.Ring
	Ephemeral *keys.Ephemeral
	Log       *slog.Logger
	Now       func() time.Time
}

// Service is the invites feature.
type Service struct {
	db   *bolt.DB
	opts Options
}

// New creates the invites buckets and returns the service.
func New(db *bolt.DB, opts Options) (*Service, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Service{db: db, opts: opts}, nil
}

func notYet(echo.Context) error { return matrix.NotFoundRoute() }

// StoreInvite serves POST /v2/store-invite.
func (s *Service) StoreInvite(c echo.Context) error { return notYet(c) }

// SignEd25519 serves POST /v2/sign-ed25519.
func (s *Service) SignEd25519(c echo.Context) error { return notYet(c) }

// StoreInviteV1 serves POST /api/v1/store-invite.
func (s *Service) StoreInviteV1(c echo.Context) error { return notYet(c) }

// SignEd25519V1 serves POST /api/v1/sign-ed25519.
func (s *Service) SignEd25519V1(c echo.Context) error { return notYet(c) }
