// Package identity owns who is talking to Herald and what they have proved:
// accounts (OpenID-backed access tokens), terms of service acceptance, and
// (in later files) bindings of addresses to Matrix IDs, lookups and email
// validation sessions.
package identity

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/background"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/store"
)

// UserInfoer checks an OpenID token at a homeserver (federation.Client).
type UserInfoer interface {
	UserInfo(ctx context.Context, server, token string) (string, error)
}

// Options configure a Service.
type Options struct {
	Terms    config.Terms
	UserInfo UserInfoer
	Log      *slog.Logger
	Now      func() time.Time
	// Ring signs associations (v1 lookup, bind answers).
	Ring *keys.Ring
	// Lookup configures hashed lookups (pepper rotation).
	Lookup config.Lookup
	// OnLookup, if set, is told of every answered lookup: the API ("v2",
	// "v1" or "v1_bulk"), how many addresses it asked about and how many
	// were bound. Metrics count these.
	OnLookup func(api string, addresses, matches int)
	// TokenIdleLifetime expires an access token unused this long
	// (account.token_idle_lifetime; 0: never).
	TokenIdleLifetime time.Duration
}

// Service is the identity feature.
type Service struct {
	db   *store.DB
	st   storage
	opts Options
	// acceptURL maps a policy URL (any language) to the policy versions it
	// accepts (several policies may share one document).
	acceptURL map[string][]policyVersion
	// bind holds binding hooks and the cached lookup pepper (bindings.go).
	bind bindState
	// val configures email validation sessions and binding (validate.go).
	val *validation
}

type policyVersion struct{ ID, Version string }

// New prepares the identity storage on db's backend (bbolt buckets, or the
// PostgreSQL tables of migration 0004) and returns the service.
func New(db *store.DB, opts Options) (*Service, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	s := &Service{db: db, st: newStorage(db), opts: opts, acceptURL: map[string][]policyVersion{}}
	for id, p := range opts.Terms.Policies {
		for _, l := range p.Languages {
			s.acceptURL[l.URL] = append(s.acceptURL[l.URL], policyVersion{id, p.Version})
		}
	}
	return s, s.st.setup(db)
}

// Account is an access token's owner. LastUsed is when the token was last
// presented, recorded at a coarse granularity (touchEvery), so expiring idle
// tokens does not write on every request. A token that expired keeps a
// tombstone (Expired set, UserID erased) for one more idle lifetime, so its
// holder is told it expired (M_UNKNOWN_TOKEN) rather than that it never
// existed.
type Account struct {
	UserID   string    `json:"user_id,omitempty"`
	Created  time.Time `json:"created"`
	LastUsed time.Time `json:"last_used,omitzero"`
	Expired  time.Time `json:"expired,omitzero"`
}

// Server is the server part of the account's user ID.
func (a *Account) Server() string {
	_, s, _ := strings.Cut(a.UserID, ":")
	return s
}

func hashToken(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

func newToken() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// CreateAccount stores a new access token for userID and returns it. Only the
// token's hash is stored.
func (s *Service) CreateAccount(userID string) (string, error) {
	token := newToken()
	now := s.opts.Now().UTC()
	err := s.db.Update(func(tx *store.Tx) error {
		return s.st.putAccount(tx, hashToken(token), &Account{UserID: userID, Created: now, LastUsed: now})
	})
	return token, err
}

// ErrUnknownToken means no account has that token.
var ErrUnknownToken = errors.New("unknown access token")

// ErrTokenExpired means the token went unused for longer than
// account.token_idle_lifetime.
var ErrTokenExpired = errors.New("access token expired")

// AccountByToken finds the token's account.
func (s *Service) AccountByToken(token string) (*Account, error) {
	var a *Account
	err := s.db.View(func(tx *store.Tx) (err error) {
		a, err = s.accountTx(tx, token, s.opts.Now())
		return err
	})
	return a, err
}

// accountTx reads the token's account inside tx: ErrUnknownToken when there
// is none, ErrTokenExpired when it expired or went idle as of now.
func (s *Service) accountTx(tx *store.Tx, token string, now time.Time) (*Account, error) {
	a, err := s.st.account(tx, hashToken(token))
	if err != nil {
		return nil, err
	}
	if a == nil {
		return nil, ErrUnknownToken
	}
	if !a.Expired.IsZero() || s.idle(a, now) {
		return a, ErrTokenExpired
	}
	return a, nil
}

// DeleteToken logs a token out.
func (s *Service) DeleteToken(token string) error {
	return s.db.Update(func(tx *store.Tx) error {
		return s.st.deleteAccount(tx, hashToken(token))
	})
}

// AcceptTerms records acceptance of the given policy URLs by userID. Unknown
// URLs are ignored. Acceptances add up across calls.
func (s *Service) AcceptTerms(userID string, urls []string) error {
	return s.db.Update(func(tx *store.Tx) error {
		accepted, err := s.st.terms(tx, userID)
		if err != nil {
			return err
		}
		for _, u := range urls {
			for _, pv := range s.acceptURL[u] {
				accepted[pv.ID+"\x00"+pv.Version] = true
			}
		}
		return s.st.putTerms(tx, userID, accepted)
	})
}

// HasAcceptedTerms reports whether userID accepted every current policy version.
func (s *Service) HasAcceptedTerms(userID string) (bool, error) {
	if len(s.opts.Terms.Policies) == 0 {
		return true, nil
	}
	var accepted map[string]bool
	err := s.db.View(func(tx *store.Tx) (err error) {
		accepted, err = s.st.terms(tx, userID)
		return err
	})
	if err != nil {
		return false, err
	}
	for id, p := range s.opts.Terms.Policies {
		if !accepted[id+"\x00"+p.Version] {
			return false, nil
		}
	}
	return true, nil
}

// idle reports whether a live account's token has gone unused past
// account.token_idle_lifetime. A record from before last use was recorded
// (LastUsed zero) is not idle: its clock starts at its next use or sweep.
func (s *Service) idle(a *Account, now time.Time) bool {
	d := s.opts.TokenIdleLifetime
	return d > 0 && !a.LastUsed.IsZero() && now.Sub(a.LastUsed) > d
}

// touchEvery is how stale a recorded last use may get before a request
// records it again: an hour, or a tenth of a shorter idle lifetime.
func (s *Service) touchEvery() time.Duration {
	if d := s.opts.TokenIdleLifetime / 10; d > 0 && d < time.Hour {
		return d
	}
	return time.Hour
}

// useToken records that token was used now if the recorded use is older
// than touchEvery, and turns it into a tombstone if it expired. The committer
// may run the function twice: it only sets values derived from now.
func (s *Service) useToken(token string, now time.Time) error {
	key := hashToken(token)
	return s.db.Commit(func(tx *store.Tx) error {
		cur, err := s.st.account(tx, key)
		if err != nil || cur == nil {
			return err // nil: logged out meanwhile
		}
		a := *cur
		switch {
		case !a.Expired.IsZero():
			return nil
		case s.idle(&a, now):
			a = Account{Created: a.Created, LastUsed: a.LastUsed, Expired: now}
		case now.Sub(a.LastUsed) >= s.touchEvery():
			a.LastUsed = now
		default:
			return nil
		}
		return s.st.putAccount(tx, key, &a)
	})
}

// ExpireIdleTokens sweeps the accounts: tokens unused past
// account.token_idle_lifetime become tombstones, tombstones older than one
// more lifetime are deleted, and records from before last use was recorded
// start their clock now. It returns how many tokens expired and how many
// tombstones were deleted.
func (s *Service) ExpireIdleTokens(now time.Time) (expired, deleted int, err error) {
	d := s.opts.TokenIdleLifetime
	if d <= 0 {
		return 0, 0, nil
	}
	return s.st.expireTokens(s.db, now.UTC(), d)
}

// ExpireTokens is one pass of the idle-token sweep (ExpireIdleTokens as of
// now), logged. On PostgreSQL the wiring runs it once per period across the
// replicas (pgstore.RunPeriodic); on bbolt RunTokenExpiry does.
func (s *Service) ExpireTokens(ctx context.Context) error {
	expired, deleted, err := s.ExpireIdleTokens(s.opts.Now().UTC())
	if err != nil {
		return fmt.Errorf("expiring idle access tokens: %w", err)
	}
	if expired+deleted > 0 {
		s.opts.Log.Info("idle access tokens expired", "expired", expired, "tombstones_deleted", deleted)
	}
	return nil
}

// SweepSessions is one pass of the validation session sweep
// (DeleteExpiredSessions as of now), logged; run like ExpireTokens.
func (s *Service) SweepSessions(ctx context.Context) error {
	n, err := s.DeleteExpiredSessions(s.opts.Now().UTC())
	if err != nil {
		return fmt.Errorf("deleting expired validation sessions: %w", err)
	}
	if n > 0 {
		s.opts.Log.Info("expired validation sessions deleted", "count", n)
	}
	return nil
}

// RunTokenExpiry runs ExpireTokens and SweepSessions every interval until
// ctx is done (one process: on PostgreSQL run them under pgstore.RunPeriodic
// instead, so that one replica at a time does).
func (s *Service) RunTokenExpiry(ctx context.Context, every time.Duration) {
	background.Every(ctx, every, func() {
		if err := s.ExpireTokens(ctx); err != nil {
			s.opts.Log.Error("token sweep", "err", err)
		}
		if err := s.SweepSessions(ctx); err != nil {
			s.opts.Log.Error("session sweep", "err", err)
		}
	})
}
