package identity

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"
	mfed "maunium.net/go/mautrix/federation"

	"github.com/herald-im/herald/federation"
	"github.com/herald-im/herald/matrix"
	"github.com/herald-im/herald/store"
)

const accountKey = "herald.account"

// AccountFrom returns the account that the Auth middleware put on c.
func AccountFrom(c echo.Context) *Account {
	a, _ := c.Get(accountKey).(*Account)
	return a
}

// TokenFrom returns the request's access token: Authorization: Bearer, or
// the access_token query parameter (which Synapse still sends).
func TokenFrom(c echo.Context) string {
	if h := c.Request().Header.Get("Authorization"); h != "" {
		if scheme, tok, ok := strings.Cut(h, " "); ok && strings.EqualFold(scheme, "Bearer") {
			return strings.TrimSpace(tok)
		}
	}
	return c.QueryParam("access_token")
}

// Auth requires a valid access token. With gated, an account that has not
// accepted every current terms policy gets 403 M_TERMS_NOT_SIGNED.
func (s *Service) Auth(gated bool) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			tok := TokenFrom(c)
			if tok == "" {
				return matrix.Unauthorized("Missing access token")
			}
			a, accepted, touch, err := s.accountAndTerms(tok, gated)
			if errors.Is(err, ErrUnknownToken) {
				return matrix.Unauthorized("Unrecognised access token")
			}
			if touch || errors.Is(err, ErrTokenExpired) {
				// Record the use (at most once per touchEvery) or the expiry.
				if err := s.useToken(tok, s.opts.Now().UTC()); err != nil {
					s.opts.Log.Error("recording access token use", "err", err)
				}
			}
			if errors.Is(err, ErrTokenExpired) {
				return matrix.UnknownToken("Access token expired after going unused: register again")
			} else if err != nil {
				return err
			}
			if gated && !accepted {
				return matrix.TermsNotSigned("Terms of service have not been accepted")
			}
			c.Set(accountKey, a)
			return next(c)
		}
	}
}

// Register serves POST /account/register: it checks the OpenID token at the
// homeserver named by matrix_server_name and issues an access token.
func (s *Service) Register(c echo.Context) error {
	var req struct {
		AccessToken      string `json:"access_token"`
		TokenType        string `json:"token_type"`
		MatrixServerName string `json:"matrix_server_name"`
		ExpiresIn        any    `json:"expires_in"`
	}
	if err := matrix.DecodeJSON(c, &req); err != nil {
		return err
	}
	if err := matrix.Require("access_token", req.AccessToken, "matrix_server_name", req.MatrixServerName); err != nil {
		return err
	}
	// OpenID tokens are always Bearer tokens; matrix-is-tester and some
	// scripts omit token_type, so a missing one means Bearer.
	if req.TokenType != "" && req.TokenType != "Bearer" {
		return matrix.InvalidParam("token_type must be Bearer")
	}
	if _, _, ok := mfed.ParseServerName(req.MatrixServerName); !ok {
		return matrix.InvalidParam("matrix_server_name is not a server name")
	}
	userID, err := s.opts.UserInfo.UserInfo(c.Request().Context(), req.MatrixServerName, req.AccessToken)
	if err != nil {
		if errors.Is(err, federation.ErrOpenIDRejected) {
			return matrix.Unauthorized("The homeserver did not accept the OpenID token").Because(err)
		}
		return matrix.Unauthorized("Could not verify the OpenID token with the homeserver").Because(err)
	}
	token, err := s.CreateAccount(userID)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]string{"token": token, "access_token": token})
}

// GetAccount serves GET /account.
func (s *Service) GetAccount(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"user_id": AccountFrom(c).UserID})
}

// Logout serves POST /account/logout.
func (s *Service) Logout(c echo.Context) error {
	if err := s.DeleteToken(TokenFrom(c)); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, struct{}{})
}

// GetTerms serves GET /terms.
func (s *Service) GetTerms(c echo.Context) error {
	policies := map[string]map[string]any{}
	for id, p := range s.opts.Terms.Policies {
		m := map[string]any{"version": p.Version}
		for lang, l := range p.Languages {
			m[lang] = map[string]string{"name": l.Name, "url": l.URL}
		}
		policies[id] = m
	}
	return c.JSON(http.StatusOK, map[string]any{"policies": policies})
}

// PostTerms serves POST /terms.
func (s *Service) PostTerms(c echo.Context) error {
	var req struct {
		UserAccepts []string `json:"user_accepts"`
	}
	if err := matrix.DecodeJSON(c, &req); err != nil {
		return err
	}
	if req.UserAccepts == nil {
		return matrix.MissingParams("Missing parameter: user_accepts")
	}
	if err := s.AcceptTerms(AccountFrom(c).UserID, req.UserAccepts); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, struct{}{})
}

// accountAndTerms reads the token's account and, when gated, whether its
// user accepted every current policy (every authenticated request pays for
// it). It runs without a transaction (store.DB.ReadOne): the account is one
// statement; the acceptances, when policies are gated, a second, which need
// not share its snapshot: acceptances are only ever added, and an account
// logged out between the two reads is refused at its next request as it
// would be had the request come a moment earlier. touch says the recorded last use is
// stale enough to record again; an expired token is ErrTokenExpired.
func (s *Service) accountAndTerms(token string, gated bool) (*Account, bool, bool, error) {
	var a *Account
	touch := false
	now := s.opts.Now().UTC()
	accepted := !gated || len(s.opts.Terms.Policies) == 0
	err := s.db.ReadOne(context.Background(), func(tx *store.Tx) error {
		var err error
		if a, err = s.accountTx(tx, token, now); err != nil {
			return err
		}
		touch = s.opts.TokenIdleLifetime > 0 && now.Sub(a.LastUsed) >= s.touchEvery()
		if accepted {
			return nil
		}
		got, err := s.st.terms(tx, a.UserID)
		if err != nil {
			return err
		}
		accepted = true
		for id, p := range s.opts.Terms.Policies {
			if !got[id+"\x00"+p.Version] {
				accepted = false
			}
		}
		return nil
	})
	return a, accepted, touch, err
}
