package invites

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/internal/textnorm"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/matrix"
	"github.com/herald-im/herald/pgstore"
	"github.com/herald-im/herald/store"
)

// The store-invite keys Herald knows; any other key is kept in Invite.Extra.
var knownKeys = map[string]bool{
	"medium": true, "address": true, "room_id": true, "sender": true, "room_alias": true,
	"room_avatar_url": true, "room_join_rules": true, "room_name": true, "room_type": true,
	"sender_display_name": true, "sender_avatar_url": true, "org.matrix.web_client_location": true,
}

// Caps on what a request may make Herald store.
const (
	maxValueRunes  = 1000 // any one string value
	maxExtraKeys   = 32
	maxExtraBytes  = 1024 // one extra value's JSON
	tokenBytes     = 32   // 256 bits, 43 characters of [A-Za-z0-9_-]
	ephemeralKeyID = "ed25519:0"
)

func jsonString(raw json.RawMessage, s *string) error {
	if bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		*s = ""
		return nil
	}
	// The usual value, a quoted string of printable ASCII without escapes,
	// is itself; anything else goes through encoding/json.
	if n := len(raw); n >= 2 && raw[0] == '"' && raw[n-1] == '"' && plainASCII(raw[1:n-1]) {
		*s = string(raw[1 : n-1])
		return nil
	}
	return json.Unmarshal(raw, s)
}

func plainASCII(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// inviteFromFields builds an Invite (not yet normalised or checked) from the
// request's keys. Known keys must be strings (or null).
func inviteFromFields(fields map[string]json.RawMessage) (*Invite, error) {
	inv := &Invite{}
	str := func(key string) (string, error) {
		raw, ok := fields[key]
		if !ok {
			return "", nil
		}
		var s string
		if err := jsonString(raw, &s); err != nil {
			return "", matrix.BadJSON("%s must be a string", key)
		}
		if len([]rune(s)) > maxValueRunes {
			return "", matrix.InvalidParam("%s is too long", key)
		}
		return s, nil
	}
	for _, f := range []struct {
		key string
		dst *string
	}{
		{"medium", &inv.Medium}, {"address", &inv.Address}, {"room_id", &inv.RoomID}, {"sender", &inv.Sender},
		{"room_alias", &inv.RoomAlias}, {"room_avatar_url", &inv.RoomAvatarURL}, {"room_join_rules", &inv.RoomJoinRules},
		{"room_name", &inv.RoomName}, {"room_type", &inv.RoomType}, {"sender_display_name", &inv.SenderDisplayName},
		{"sender_avatar_url", &inv.SenderAvatarURL}, {"org.matrix.web_client_location", &inv.WebClientLocation},
	} {
		v, err := str(f.key)
		if err != nil {
			return nil, err
		}
		*f.dst = v
	}
	for k, v := range fields {
		if knownKeys[k] || len(inv.Extra) >= maxExtraKeys || len(v) > maxExtraBytes || len(k) > 255 {
			continue
		}
		if inv.Extra == nil {
			inv.Extra = map[string]json.RawMessage{}
		}
		inv.Extra[k] = append(json.RawMessage(nil), v...)
	}
	return inv, nil
}

// storeAnswer is store-invite's answer.
type storeAnswer struct {
	Token       string      `json:"token"`
	PublicKey   string      `json:"public_key"`
	PublicKeys  []publicKey `json:"public_keys"`
	DisplayName string      `json:"display_name"`

	stored bool // a new invite, not the answer for a pending duplicate
}

type publicKey struct {
	PublicKey      string `json:"public_key"`
	KeyValidityURL string `json:"key_validity_url"`
}

func (s *Service) answer(inv *Invite, api string) storeAnswer {
	prefix := "/_matrix/identity/v2"
	if api == "v1" {
		prefix = "/_matrix/identity/api/v1"
	}
	base := s.cfg.BaseURL() + prefix + "/pubkey"
	a := storeAnswer{
		Token:       inv.Token,
		PublicKey:   inv.PublicKey,
		PublicKeys:  []publicKey{{PublicKey: inv.PublicKey, KeyValidityURL: base + "/isvalid"}},
		DisplayName: matrix.RedactEmail(inv.Address),
	}
	if api != "v1" {
		// Synapse checks key_validity_url, so a revoked invite's ephemeral key
		// stops working there. Only Dendrite uses v1, and it never calls
		// key_validity_url: an ephemeral key in the event would let whoever
		// holds the invite email (its signurl carries the private key) sign
		// an onbind Dendrite accepts even after the invite was revoked; and
		// Dendrite has no third_party_signed join for the key to serve.
		a.PublicKeys = append(a.PublicKeys, publicKey{PublicKey: inv.EphemeralPublic, KeyValidityURL: base + "/ephemeral/isvalid"})
	}
	return a
}

func newInviteToken() string {
	b := make([]byte, tokenBytes)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func validRoomID(s string) bool {
	return len(s) > 1 && s[0] == '!' && len(s) <= 255 && !strings.ContainsAny(s, " \t\r\n\x00") &&
		!strings.ContainsFunc(s, textnorm.Refused)
}

// store is store-invite for both API versions. account is the caller's user
// ID (v2), or "" for the unauthenticated v1 form.
func (s *Service) store(fields map[string]json.RawMessage, account, api string) (*storeAnswer, error) {
	inv, err := inviteFromFields(fields)
	if err != nil {
		return nil, err
	}
	if err := matrix.Require("medium", inv.Medium, "address", inv.Address, "room_id", inv.RoomID, "sender", inv.Sender); err != nil {
		return nil, err
	}
	if inv.Medium != "email" {
		return nil, matrix.Unrecognized("Unsupported medium: only email invites are supported")
	}
	if account != "" && inv.Sender != account {
		return nil, matrix.ForbiddenUnauthorized("sender must be the user the access token belongs to")
	}
	if !matrix.ValidUserID(inv.Sender) {
		return nil, matrix.InvalidParam("sender is not a Matrix user ID")
	}
	if !validRoomID(inv.RoomID) {
		return nil, matrix.InvalidParam("room_id is not a Matrix room ID")
	}
	if inv.Address, err = identity.NormalizeEmail(inv.Address); err != nil {
		return nil, err
	}
	inv.Homeserver = matrix.ServerName(inv.Sender)
	inv.Via = api
	if err := s.policy.check(inv); err != nil {
		return nil, err
	}

	// Already bound, or a repeat of a pending invite: answer without writing.
	dup, err := s.precheck(inv)
	if err != nil {
		return nil, busy(err)
	}
	if dup != nil {
		// The inviter invited again: same token (the room gets no second
		// invite event), and the invitee gets the email again if the
		// resend rule allows.
		if _, err := s.resend(dup, "repeated store-invite"); err != nil {
			if !errors.Is(err, ErrResendRefused) {
				return nil, err
			}
			s.opts.Log.Info("repeated store-invite: email not sent again", "invite", dup.ID, "reason", err)
		}
		a := s.answer(dup, api)
		return &a, nil
	}
	// The homeserver's bucket is keyed by its normalised name: "hs:8448",
	// "hs." and "HS" must not be three homeservers with three allowances.
	if err := s.limits.allow(inv.Sender, inv.RoomID, inv.Address, textnorm.ServerName(inv.Homeserver)); err != nil {
		return nil, err
	}

	// An upstream identity server may vouch for the invitee (upstream.go).
	vouch := s.askUpstream(inv)

	// Everything random or rendered is made before the transaction: the
	// committer may run the function more than once, which must then write the same thing.
	now := s.opts.Now().UTC()
	inv.Token = newInviteToken()
	pub, priv := keys.NewEphemeralKey()
	inv.EphemeralPublic = keys.EncodeBase64(pub)
	inv.EphemeralPrivate = keys.EncodeBase64(priv.Seed())
	lt := s.opts.Ring.Current()
	inv.PublicKey, inv.KeyID = lt.PublicBase64(), lt.ID
	inv.Created, inv.StateChanged, inv.State = now, now, StatePending
	if d := s.cfg.Invites.Expiry.D(); d > 0 {
		inv.ExpiresAt = now.Add(d)
	}
	// The mail is prepared here too, so the single bbolt writer only
	// writes. The invite email is rendered when it is sent (prepareMail);
	// the upstream notice is rendered and composed now.
	var mail *mailer.Prepared
	if vouch != nil {
		m, err := s.renderWaiting(inv)
		if err != nil {
			return nil, err
		}
		if s.opts.Mailer != nil && s.upstream.opts.Email == "notify" {
			if mail, err = s.opts.Mailer.Prepare(m); err != nil {
				return nil, err
			}
		}
	} else if s.opts.Mailer != nil {
		if mail, err = s.prepareMail(inv); err != nil {
			return nil, err
		}
	}

	var result *Invite
	queued := false
	err = s.commitStore(func(tx *store.Tx) error {
		var err error
		result, queued, err = s.storeTx(tx, inv, mail, vouch, now)
		return err
	})
	if err != nil {
		return nil, busy(err)
	}
	if queued {
		s.opts.Mailer.Wake()
	} else if s.opts.Mailer == nil && vouch == nil && result.ID != 0 && result.Token == inv.Token {
		s.opts.Log.Warn("invite stored without an email: no mail queue configured", "invite", result.ID)
	}
	stored := result.Token == inv.Token
	if stored {
		s.opts.Log.Info("invite stored", "invite", result.ID, "to", matrix.RedactEmail(result.Address),
			"sender", result.Sender, "room", result.RoomID, "api", api)
		if vouch != nil {
			s.opts.Log.Info("invite vouched for by an upstream identity server: resolving it shortly", "invite", result.ID,
				"mxid", vouch.MXID, "upstream", vouch.Upstream, "email", s.upstream.opts.Email)
		}
	}
	a := s.answer(result, api)
	a.stored = stored
	return &a, nil
}

// precheck is store-invite's answer without writing: M_THREEPID_IN_USE
// for a bound address, or the pending invite it repeats. It runs without a
// transaction (store.DB.ReadOne): on PostgreSQL the binding and the
// de-duplication entry are read in one round trip, then the entry's invite
// (only when there is one). They need not be one snapshot: each answer is
// true of the moment its read ran, and nothing is stored on the strength
// of this check, which storeTx makes again under the address lock.
func (s *Service) precheck(inv *Invite) (*Invite, error) {
	var dup *Invite
	err := s.db.ReadOne(context.Background(), func(tx *store.Tx) error {
		var bound *identity.Binding
		if s.opts.Identity != nil { // always set but in storage tests (New requires it)
			if err := s.opts.Identity.QueueBinding(tx, "email", inv.Address, &bound); err != nil {
				return err
			}
		}
		var id uint64
		if err := s.queueDedup(tx, inv.Sender, inv.RoomID, inv.Medium, inv.Address, &id); err != nil {
			return err
		}
		if err := tx.Flush(); err != nil {
			return err
		}
		if bound != nil {
			return errBound(bound)
		}
		if id == 0 {
			return nil
		}
		var err error
		dup, err = s.duplicate(tx, id)
		return err
	})
	return dup, err
}

// commitStore runs fn, store-invite's write transaction (storeTx), at READ
// COMMITTED on PostgreSQL: what storeTx decides from its reads is held until
// its commit by the de-duplication entry's key and row lock and by the
// address's advisory lock (pgStorage.claimDedup, Deliveries.resolve), not by
// serializability, so concurrent store-invites never fail each other with
// serialization failures (see docs/storage-postgres.md).
func (s *Service) commitStore(fn func(*store.Tx) error) error {
	return s.db.CommitWith(context.Background(), store.TxOptions{ReadCommitted: true}, fn)
}

// storeTx is store-invite's write transaction: unless the address was bound
// or the same invite stored meanwhile (then that one is the result), it
// checks the opt-outs and writes the invite with its indexes, its mail in
// the outbox and its ephemeral key, and the upstream vouch. It may run more
// than once (see store.DB): everything random or rendered comes in inv and
// mail, made before. queued says a mail was put in the outbox.
func (s *Service) storeTx(tx *store.Tx, inv *Invite, mail *mailer.Prepared, vouch *Vouch, now time.Time) (*Invite, bool, error) {
	// The claim comes first: on PostgreSQL it takes the address's lock,
	// under which the binding is read (see pgStorage.claimDedup). A bound
	// address is refused before a duplicate is answered, as before.
	d, id, err := s.claimDuplicate(tx, inv.Sender, inv.RoomID, inv.Medium, inv.Address)
	if err != nil {
		return nil, false, err
	}
	// The binding and opt-out reads are queued (on PostgreSQL: sent with
	// the transaction's next statement, after the claim took the lock;
	// on bbolt read at once).
	var bound *identity.Binding
	if s.opts.Identity != nil { // always set but in storage tests (New requires it)
		if err := s.opts.Identity.QueueBinding(tx, "email", inv.Address, &bound); err != nil {
			return nil, false, err
		}
	}
	optedOut := false
	if d == nil {
		if err := s.queueOptedOut(tx, inv.Address, inv.Sender, &optedOut); err != nil {
			return nil, false, err
		}
	}
	rec := *inv
	rec.ID = id
	queued := false
	enqueue := func() error {
		m := *mail // a copy: this function may run twice
		m.Ref = "invite:" + strconv.FormatUint(rec.ID, 10)
		var err error
		if rec.MailID, err = s.opts.Mailer.EnqueuePrepared(tx, &m); err != nil {
			return err
		}
		rec.MailedAt = now
		queued = true
		return nil
	}
	if tx.PG != nil && d == nil && id != 0 && mail != nil {
		// The outbox insert returns the mail id the invite records: the
		// queued reads go with it, in one round trip. A refusal below
		// returns an error, which rolls the insert back.
		if err := enqueue(); err != nil {
			return nil, false, err
		}
	} else if err := tx.Flush(); err != nil {
		return nil, false, err
	}
	if bound != nil {
		return nil, false, errBound(bound)
	}
	if d != nil {
		return d, false, nil
	}
	if optedOut {
		return nil, false, errOptedOut()
	}
	// An id reserved by the claim comes with its de-duplication entry.
	claimed := rec.ID != 0
	if rec.ID == 0 {
		if rec.ID, err = s.reserveID(tx); err != nil {
			return nil, false, err
		}
		id = rec.ID
	}
	if mail != nil && !queued {
		if err := enqueue(); err != nil {
			return nil, false, err
		}
	}
	if err := s.insertClaimed(tx, &rec, claimed); err != nil {
		return nil, false, err
	}
	if s.opts.Ephemeral != nil { // always set but in storage tests (New requires it)
		if err := s.opts.Ephemeral.Put(tx, rec.EphemeralPublic, "invite:"+strconv.FormatUint(id, 10), rec.ExpiresAt); err != nil {
			return nil, false, err
		}
	}
	if vouch != nil {
		if err := s.recordVouch(tx, id, vouch); err != nil {
			return nil, false, err
		}
	}
	if s.opts.StoreTxHook != nil {
		if err := s.opts.StoreTxHook(); err != nil {
			return nil, false, err
		}
	}
	return &rec, queued, nil
}

// busyRetryAfter is the wait store-invite suggests when the database was too
// busy with conflicting transactions.
const busyRetryAfter = 500 * time.Millisecond

// busy turns pgstore.ErrContention (a PostgreSQL transaction that kept
// failing on serialization conflicts until store.DB's retries ran out) into
// 429 M_LIMIT_EXCEEDED with retry_after_ms: the answer the Matrix spec gives
// for "too many requests, try again after this long", which store-invite
// already answers for its rate limits, so a homeserver that retries a rate
// limited store-invite retries this one too. A 503 would carry no standard
// errcode or wait, and a 500 would say the invite failed for good. Other
// errors pass unchanged.
func busy(err error) error {
	if errors.Is(err, pgstore.ErrContention) {
		return matrix.LimitExceeded(busyRetryAfter.Milliseconds()).Because(err)
	}
	return err
}

// observeStore tells Options.OnStore how a store-invite ended: "stored",
// "deduplicated" (the answer for a pending identical invite) or "refused"
// with a reason from a small fixed set (never anything from the request).
func (s *Service) observeStore(a *storeAnswer, err error) {
	if s.opts.OnStore == nil {
		return
	}
	switch {
	case err == nil && a.stored:
		s.opts.OnStore("stored", "")
	case err == nil:
		s.opts.OnStore("deduplicated", "")
	default:
		s.opts.OnStore("refused", refusalReason(err))
	}
}

// refusalReason names why a store-invite was refused, from its errcode.
func refusalReason(err error) string {
	me, ok := matrix.AsError(err)
	if !ok || me.Status >= 500 {
		return "error"
	}
	if errors.Is(err, pgstore.ErrContention) {
		return "busy"
	}
	switch me.Code {
	case "M_LIMIT_EXCEEDED":
		return "rate_limited"
	case "M_THREEPID_IN_USE":
		return "already_bound"
	case "M_FORBIDDEN":
		return "policy"
	case "M_UNAUTHORIZED", "M_TERMS_NOT_SIGNED":
		return "unauthorized"
	case "M_UNRECOGNIZED":
		return "unsupported_medium"
	}
	return "invalid"
}

// errBound is store-invite's refusal of an address already bound.
func errBound(b *identity.Binding) error {
	return matrix.ThreepidInUse("Binding already known").With("mxid", b.MXID)
}

// StoreInvite serves POST /v2/store-invite (authenticated, terms-gated).
func (s *Service) StoreInvite(c echo.Context) error {
	var fields map[string]json.RawMessage
	if err := matrix.DecodeJSON(c, &fields); err != nil {
		s.observeStore(nil, err)
		return err
	}
	acct := identity.AccountFrom(c)
	if acct == nil {
		return matrix.Unauthorized("Missing access token")
	}
	if fields != nil {
		brandFromQuery(c, fields) // brand.go
	}
	a, err := s.store(fields, acct.UserID, "v2")
	s.observeStore(a, err)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, a)
}

// StoreInviteV1 serves POST /api/v1/store-invite: no authentication, the body
// form-encoded (as Dendrite sends it) or JSON. When
// compat.v1_store_invite_allow is set, only those client addresses may call it.
func (s *Service) StoreInviteV1(c echo.Context) error {
	if !s.v1Allowed(c) {
		err := matrix.Forbidden("This identity server does not accept v1 store-invite from your address")
		s.observeStore(nil, err)
		return err
	}
	fields, err := formOrJSON(c)
	if err != nil {
		s.observeStore(nil, err)
		return err
	}
	if fields != nil {
		brandFromQuery(c, fields) // brand.go
	}
	a, err := s.store(fields, "", "v1")
	s.observeStore(a, err)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, a)
}

// v1Allowed checks the client address against compat.v1_store_invite_allow.
// The address is the TCP peer, unless the server was set up with an
// IPExtractor that trusts a proxy.
func (s *Service) v1Allowed(c echo.Context) bool {
	allow := s.cfg.Compat.V1StoreInviteAllow
	if len(allow) == 0 {
		return true
	}
	host := c.Request().RemoteAddr
	if c.Echo().IPExtractor != nil {
		host = c.RealIP()
	} else if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return false
	}
	for _, a := range allow {
		if strings.Contains(a, "/") {
			if _, n, err := net.ParseCIDR(a); err == nil && n.Contains(ip) {
				return true
			}
		} else if p := net.ParseIP(a); p != nil && p.Equal(ip) {
			return true
		}
	}
	return false
}

// formOrJSON reads a v1 request's parameters: a JSON object body, or a
// form-encoded body (Dendrite sends a form; others JSON: the body's first
// byte tells them apart whatever the Content-Type claims), plus the query
// string (body values win).
func formOrJSON(c echo.Context) (map[string]json.RawMessage, error) {
	fields := map[string]json.RawMessage{}
	if err := matrix.DecodeParams(c, &fields, matrix.Params{SniffForm: true, Query: true}); err != nil {
		return nil, err
	}
	return fields, nil
}

// ---- sign-ed25519 ----

// Sign signs {mxid, sender, token} with the invite's ephemeral key, after
// checking that privateKey is that key and that the invite can still be
// accepted by mxid. It answers the signed object.
func (s *Service) Sign(mxid, token, privateKey string) (map[string]json.RawMessage, error) {
	if err := matrix.Require("mxid", mxid, "token", token, "private_key", privateKey); err != nil {
		return nil, err
	}
	if !matrix.ValidUserID(mxid) {
		return nil, matrix.InvalidParam("mxid is not a Matrix user ID")
	}
	inv, err := s.ByToken(token)
	if errors.Is(err, ErrNotFound) {
		return nil, matrix.UnrecognizedNotFound("Didn't recognize token")
	}
	if err != nil {
		return nil, err
	}
	seed, err := keys.DecodeBase64(privateKey)
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, matrix.InvalidParam("private_key is not an ed25519 private key in base64")
	}
	priv := ed25519.NewKeyFromSeed(seed)
	if err := s.checkEphemeral(inv, priv); err != nil {
		return nil, err
	}
	switch {
	case inv.Pending(s.opts.Now()):
	case inv.State == StateResolved && (inv.ResolvedMXID == "" || inv.ResolvedMXID == mxid):
	default:
		return nil, matrix.Forbidden("This invite is no longer valid (%s)", stateWord(inv))
	}
	return keys.SignJSON(map[string]string{"mxid": mxid, "sender": inv.Sender, "token": inv.Token},
		inv.signingServer(s.opts.Ring.ServerName()), ephemeralKeyID, priv)
}

func stateWord(inv *Invite) string {
	if inv.State == StatePending {
		return StateExpired
	}
	return inv.State
}

// SignEd25519 serves POST /v2/sign-ed25519 (authenticated, terms-gated).
func (s *Service) SignEd25519(c echo.Context) error {
	var req struct {
		MXID       string `json:"mxid"`
		Token      string `json:"token"`
		PrivateKey string `json:"private_key"`
	}
	if err := matrix.DecodeJSON(c, &req); err != nil {
		return err
	}
	signed, err := s.Sign(req.MXID, req.Token, req.PrivateKey)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, signed)
}

// SignEd25519V1 serves POST /api/v1/sign-ed25519: no authentication, the
// parameters in the query string (the email's signurl with &mxid= appended,
// no body, as matrix-js-sdk sends it), a form body, or a JSON body.
func (s *Service) SignEd25519V1(c echo.Context) error {
	fields, err := formOrJSON(c)
	if err != nil {
		return err
	}
	get := func(k string) string {
		var v string
		if raw, ok := fields[k]; ok {
			if jsonString(raw, &v) != nil {
				return ""
			}
		}
		return v
	}
	signed, err := s.Sign(get("mxid"), get("token"), get("private_key"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, signed)
}
