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
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/keys"
)

var (
	accountsBucket = []byte("identity_accounts") // sha256(token) -> Account
	termsBucket    = []byte("identity_terms")    // user id -> accepted policy versions
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
}

// Service is the identity feature.
type Service struct {
	db   *bolt.DB
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

// New creates the identity buckets and returns the service.
func New(db *bolt.DB, opts Options) (*Service, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	s := &Service{db: db, opts: opts, acceptURL: map[string][]policyVersion{}}
	for id, p := range opts.Terms.Policies {
		for _, l := range p.Languages {
			s.acceptURL[l.URL] = append(s.acceptURL[l.URL], policyVersion{id, p.Version})
		}
	}
	err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	return s, err
}

// allBuckets lists every bucket the identity package owns.
var allBuckets = [][]byte{accountsBucket, termsBucket}

// Account is an access token's owner.
type Account struct {
	UserID  string    `json:"user_id"`
	Created time.Time `json:"created"`
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
	raw, _ := json.Marshal(Account{UserID: userID, Created: s.opts.Now().UTC()})
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(accountsBucket).Put(hashToken(token), raw)
	})
	return token, err
}

// ErrUnknownToken means no account has that token.
var ErrUnknownToken = errors.New("unknown access token")

// AccountByToken finds the token's account.
func (s *Service) AccountByToken(token string) (*Account, error) {
	var a *Account
	err := s.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(accountsBucket).Get(hashToken(token))
		if raw == nil {
			return ErrUnknownToken
		}
		a = new(Account)
		return json.Unmarshal(raw, a)
	})
	return a, err
}

// DeleteToken logs a token out.
func (s *Service) DeleteToken(token string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(accountsBucket).Delete(hashToken(token))
	})
}

// AcceptTerms records acceptance of the given policy URLs by userID. Unknown
// URLs are ignored. Acceptances add up across calls.
func (s *Service) AcceptTerms(userID string, urls []string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(termsBucket)
		accepted := map[string]bool{}
		if raw := b.Get([]byte(userID)); raw != nil {
			if err := json.Unmarshal(raw, &accepted); err != nil {
				return err
			}
		}
		for _, u := range urls {
			for _, pv := range s.acceptURL[u] {
				accepted[pv.ID+"\x00"+pv.Version] = true
			}
		}
		raw, _ := json.Marshal(accepted)
		return b.Put([]byte(userID), raw)
	})
}

// HasAcceptedTerms reports whether userID accepted every current policy version.
func (s *Service) HasAcceptedTerms(userID string) (bool, error) {
	if len(s.opts.Terms.Policies) == 0 {
		return true, nil
	}
	accepted := map[string]bool{}
	err := s.db.View(func(tx *bolt.Tx) error {
		if raw := tx.Bucket(termsBucket).Get([]byte(userID)); raw != nil {
			return json.Unmarshal(raw, &accepted)
		}
		return nil
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
