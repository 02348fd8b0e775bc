// Package hssim is a homeserver simulator for tests: an httptest server that
// receives onbind notifications and checks them exactly as Synapse or Dendrite
// do (see ../shared/INTEROP.md), serves its signing keys and OpenID userinfo,
// signs X-Matrix requests, and can be told to fail, hang, answer 5xx or 429.
package hssim

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/keys"
)

// Mode selects whose onbind checks the simulator applies.
type Mode string

const (
	Synapse  Mode = "synapse"
	Dendrite Mode = "dendrite"
)

// PublicKey is one entry of an invite event's public_keys.
type PublicKey struct {
	PublicKey      string `json:"public_key"`
	KeyValidityURL string `json:"key_validity_url"`
}

// Invite is the m.room.third_party_invite state the homeserver stored after
// store-invite: what onbind is checked against.
type Invite struct {
	RoomID         string
	Sender         string
	Token          string // the state key
	DisplayName    string
	PublicKey      string // legacy single key ("" when absent)
	KeyValidityURL string // legacy, for PublicKey
	PublicKeys     []PublicKey
}

// Accepted is one invite the homeserver turned into a membership.
type Accepted struct {
	RoomID, Sender, MXID, Token string
}

// Call is one onbind request as received.
type Call struct {
	Method string
	Body   []byte
	Status int // what the simulator answered (0: it hung up)
}

// Sim is the simulated homeserver.
type Sim struct {
	ServerName string
	URL        string
	KeyID      string
	Key        ed25519.PrivateKey

	srv        *httptest.Server
	client     *http.Client
	keyFetches atomic.Int64

	mu         sync.Mutex
	mode       Mode
	putOnly    bool
	down       bool
	hang       chan struct{} // non-nil: onbind blocks until closed or the client goes away
	failStatus int
	failCount  int // <0: until cleared
	retryAfter string
	invites    map[string]Invite // room_id + "\x00" + token
	users      map[string]bool   // local users (Dendrite needs the invitee to exist)
	openid     map[string]string // token -> mxid
	clientTok  map[string]string // client-server access token -> mxid (AddServiceUser)
	accepted   []Accepted
	calls      []Call
}

// New starts a simulator for serverName in mode; it stops at test cleanup.
func New(t testing.TB, serverName string, mode Mode) *Sim {
	t.Helper()
	pub, priv := keys.NewEphemeralKey()
	s := &Sim{
		ServerName: serverName,
		KeyID:      "ed25519:sim" + keys.EncodeBase64(pub[:3]),
		Key:        priv,
		mode:       mode,
		invites:    map[string]Invite{},
		users:      map[string]bool{},
		openid:     map[string]string{},
		clientTok:  map[string]string{},
		client:     &http.Client{Timeout: 5 * time.Second},
	}
	s.srv = httptest.NewServer(s)
	s.URL = s.srv.URL
	t.Cleanup(func() {
		s.Hang(false)
		s.srv.CloseClientConnections()
		s.srv.Close()
	})
	return s
}

// SetMode switches between Synapse and Dendrite checks.
func (s *Sim) SetMode(m Mode) { s.mu.Lock(); s.mode = m; s.mu.Unlock() }

// PutOnly makes the server answer POST onbind with 404 M_UNRECOGNIZED, as a
// server following the spec's PUT would.
func (s *Sim) PutOnly(on bool) { s.mu.Lock(); s.putOnly = on; s.mu.Unlock() }

// Down makes onbind drop the connection without answering (a network error).
func (s *Sim) Down(on bool) { s.mu.Lock(); s.down = on; s.mu.Unlock() }

// Hang makes onbind block without answering until Hang(false) or the caller
// gives up.
func (s *Sim) Hang(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if on && s.hang == nil {
		s.hang = make(chan struct{})
	}
	if !on && s.hang != nil {
		close(s.hang)
		s.hang = nil
	}
}

// Fail makes the next n onbind calls (n < 0: every call until Fail(0, 0, ""))
// answer status with a Matrix error body, and a Retry-After header when
// retryAfter is not empty.
func (s *Sim) Fail(n, status int, retryAfter string) {
	s.mu.Lock()
	s.failCount, s.failStatus, s.retryAfter = n, status, retryAfter
	s.mu.Unlock()
}

// AddUser makes mxid a local user and returns an OpenID token for it (what
// /account/register checks at userinfo).
func (s *Sim) AddUser(mxid string) string {
	tok := "oid_" + keys.EncodeBase64([]byte(mxid+time.Now().String()))
	tok = strings.NewReplacer("+", "A", "/", "B").Replace(tok)
	s.mu.Lock()
	s.users[mxid] = true
	s.openid[tok] = mxid
	s.mu.Unlock()
	return tok
}

// AddServiceUser makes mxid a local user with a client-server access token,
// which POST /_matrix/client/v3/user/{mxid}/openid/request_token accepts (as
// a homeserver does for a service account an identity server registers
// elsewhere with). It returns the access token.
func (s *Sim) AddServiceUser(mxid string) string {
	tok := "syt_" + keys.EncodeBase64([]byte(mxid+time.Now().String()))
	tok = strings.NewReplacer("+", "A", "/", "B").Replace(tok)
	s.mu.Lock()
	s.users[mxid] = true
	s.clientTok[tok] = mxid
	s.mu.Unlock()
	return tok
}

// requestToken serves POST /_matrix/client/v3/user/{userId}/openid/request_token:
// the Bearer token must belong to userId; the answer is a fresh OpenID token
// that userinfo vouches for.
func (s *Sim) requestToken(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writeErr(w, http.StatusMethodNotAllowed, "M_UNRECOGNIZED", "Unrecognized request")
		return
	}
	user := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/_matrix/client/v3/user/"), "/openid/request_token")
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	s.mu.Lock()
	owner, ok := s.clientTok[tok]
	s.mu.Unlock()
	switch {
	case !ok:
		writeErr(w, http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Invalid access token passed.")
		return
	case owner != user:
		writeErr(w, http.StatusForbidden, "M_FORBIDDEN", "Cannot request tokens for other users.")
		return
	}
	oid := s.AddUser(user)
	writeJSON(w, http.StatusOK, map[string]any{"access_token": oid, "token_type": "Bearer", "matrix_server_name": s.ServerName, "expires_in": 3600})
}

// AddInvite records a third-party invite event, as the homeserver does after
// store-invite.
func (s *Sim) AddInvite(inv Invite) {
	s.mu.Lock()
	s.invites[inv.RoomID+"\x00"+inv.Token] = inv
	s.mu.Unlock()
}

// AddStoreInviteAnswer records the invite event the homeserver would write
// from a store-invite answer, exactly as Synapse does: the token, the legacy
// public_key (with an invented key_validity_url when only it is given,
// derived from idServer, e.g. "https://id.example.org"), and public_keys
// verbatim.
func (s *Sim) AddStoreInviteAnswer(roomID, sender, idServerBase string, answer []byte) (Invite, error) {
	var a struct {
		Token       string      `json:"token"`
		DisplayName string      `json:"display_name"`
		PublicKey   string      `json:"public_key"`
		PublicKeys  []PublicKey `json:"public_keys"`
	}
	if err := json.Unmarshal(answer, &a); err != nil {
		return Invite{}, err
	}
	if a.Token == "" {
		return Invite{}, errors.New("store-invite answer has no token")
	}
	inv := Invite{RoomID: roomID, Sender: sender, Token: a.Token, DisplayName: a.DisplayName, PublicKeys: a.PublicKeys}
	switch {
	case a.PublicKey != "":
		inv.PublicKey = a.PublicKey
		inv.KeyValidityURL = strings.TrimRight(idServerBase, "/") + "/_matrix/identity/v2/pubkey/isvalid"
		if len(a.PublicKeys) > 0 && a.PublicKeys[0].PublicKey == a.PublicKey {
			inv.KeyValidityURL = a.PublicKeys[0].KeyValidityURL
		}
	case len(a.PublicKeys) > 0:
		inv.PublicKey = a.PublicKeys[0].PublicKey
		inv.KeyValidityURL = a.PublicKeys[0].KeyValidityURL
	}
	s.AddInvite(inv)
	return inv, nil
}

// Accepted lists every invite accepted so far, duplicates included.
func (s *Sim) Accepted() []Accepted {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Accepted(nil), s.accepted...)
}

// Calls lists every onbind request received.
func (s *Sim) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Call(nil), s.calls...)
}

// ServerKeysJSON is the /_matrix/key/v2/server answer.
func (s *Sim) ServerKeysJSON() []byte {
	obj := map[string]any{
		"server_name":     s.ServerName,
		"valid_until_ts":  time.Now().Add(time.Hour).UnixMilli(),
		"old_verify_keys": map[string]any{},
		"verify_keys":     map[string]any{s.KeyID: map[string]string{"key": keys.EncodeBase64(s.Key.Public().(ed25519.PublicKey))}},
	}
	signed, err := keys.SignJSON(obj, s.ServerName, s.KeyID, s.Key)
	if err != nil {
		panic(err)
	}
	raw, _ := json.Marshal(signed)
	return raw
}

// SignRequest sets an X-Matrix Authorization header on req (whose body is
// body) in the server-server form: destination signed and named in the header.
func (s *Sim) SignRequest(req *http.Request, destination string, body []byte) {
	h, err := identity.SignXMatrix(req.Method, req.URL.RequestURI(), body, s.ServerName, destination, s.KeyID, s.Key)
	if err != nil {
		panic(err)
	}
	req.Header.Set("Authorization", h)
}

// SignRequestSynapse sets the Authorization header exactly as Synapse (1.58
// and later) signs its unbind request to an identity server
// (build_auth_headers with destination=None, destination_is=idServer):
// {method, uri, origin, destination_is: idServer, content} signed, and the
// header X-Matrix origin="HS",key="K",sig="S",destination="ID_SERVER".
func (s *Sim) SignRequestSynapse(req *http.Request, idServer string, body []byte) {
	s.setAuth(req, identity.SignXMatrixIdentity, idServer, body)
}

// SignRequestSynapseLegacy signs as Synapse did before 1.58 (and sydent
// does): the same signed object, a header without destination.
func (s *Sim) SignRequestSynapseLegacy(req *http.Request, idServer string, body []byte) {
	s.setAuth(req, identity.SignXMatrixIdentityLegacy, idServer, body)
}

// SignRequestNoDestination signs in the server-server form ("destination"
// signed) with a header that names no destination, as Dendrite and servers
// built before MSC3383 do.
func (s *Sim) SignRequestNoDestination(req *http.Request, destination string, body []byte) {
	s.setAuth(req, identity.SignXMatrixNoDestination, destination, body)
}

func (s *Sim) setAuth(req *http.Request, sign func(method, uri string, body []byte, origin, dest, keyID string, priv ed25519.PrivateKey) (string, error), dest string, body []byte) {
	h, err := sign(req.Method, req.URL.RequestURI(), body, s.ServerName, dest, s.KeyID, s.Key)
	if err != nil {
		panic(err)
	}
	req.Header.Set("Authorization", h)
}

// KeyFetches is how many times /_matrix/key/v2/server was fetched.
func (s *Sim) KeyFetches() int64 { return s.keyFetches.Load() }

func (s *Sim) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/_matrix/key/v2/server" && r.Method == http.MethodGet:
		s.keyFetches.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(s.ServerKeysJSON())
	case r.URL.Path == "/_matrix/federation/v1/openid/userinfo" && r.Method == http.MethodGet:
		s.mu.Lock()
		mxid, ok := s.openid[r.URL.Query().Get("access_token")]
		s.mu.Unlock()
		if !ok {
			writeErr(w, http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Access Token unknown or expired")
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"sub": mxid})
	case strings.HasPrefix(r.URL.Path, "/_matrix/client/v3/user/") && strings.HasSuffix(r.URL.Path, "/openid/request_token"):
		s.requestToken(w, r)
	case r.URL.Path == "/_matrix/federation/v1/3pid/onbind":
		s.onbind(w, r)
	default:
		writeErr(w, http.StatusNotFound, "M_UNRECOGNIZED", "Unrecognized request")
	}
}

func (s *Sim) onbind(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	s.mu.Lock()
	call := len(s.calls)
	s.calls = append(s.calls, Call{Method: r.Method, Body: body})
	down, hang, putOnly, mode := s.down, s.hang, s.putOnly, s.mode
	failStatus, retryAfter := 0, ""
	if s.failCount != 0 {
		failStatus, retryAfter = s.failStatus, s.retryAfter
		if s.failCount > 0 {
			s.failCount--
		}
	}
	s.mu.Unlock()
	answer := func(status int, v any) {
		s.mu.Lock()
		s.calls[call].Status = status
		s.mu.Unlock()
		writeJSON(w, status, v)
	}
	if down {
		hangUp(w)
		return
	}
	if hang != nil {
		select {
		case <-hang:
		case <-r.Context().Done():
			return
		}
	}
	if failStatus != 0 {
		if retryAfter != "" {
			w.Header().Set("Retry-After", retryAfter)
		}
		answer(failStatus, matrixErr("M_UNKNOWN", "simulated failure"))
		return
	}
	allowed := r.Method == http.MethodPost
	if putOnly {
		allowed = r.Method == http.MethodPut
	}
	if !allowed {
		answer(http.StatusNotFound, matrixErr("M_UNRECOGNIZED", "Unrecognized request"))
		return
	}
	status, v := s.process(r, body, mode)
	answer(status, v)
}

// onbindInvite is one entry of invites[] as homeservers read it.
type onbindInvite struct {
	Medium  string          `json:"medium"`
	Address string          `json:"address"`
	MXID    string          `json:"mxid"`
	RoomID  string          `json:"room_id"`
	Sender  string          `json:"sender"`
	Signed  json.RawMessage `json:"signed"`
}

func (s *Sim) process(r *http.Request, body []byte, mode Mode) (int, any) {
	var req struct {
		Invites []onbindInvite `json:"invites"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return http.StatusBadRequest, matrixErr("M_NOT_JSON", "Content not JSON.")
	}
	var firstErr *simError
	for _, inv := range req.Invites {
		var err *simError
		if mode == Dendrite {
			err = s.checkDendrite(inv)
		} else {
			err = s.checkSynapse(r, inv)
		}
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		var signed struct {
			Token string `json:"token"`
		}
		_ = json.Unmarshal(inv.Signed, &signed)
		s.mu.Lock()
		s.accepted = append(s.accepted, Accepted{RoomID: inv.RoomID, Sender: inv.Sender, MXID: inv.MXID, Token: signed.Token})
		s.mu.Unlock()
	}
	if firstErr != nil {
		return firstErr.status, matrixErr(firstErr.code, firstErr.msg)
	}
	return http.StatusOK, map[string]any{}
}

type simError struct {
	status    int
	code, msg string
}

func fail(status int, code, format string, args ...any) *simError {
	return &simError{status, code, fmt.Sprintf(format, args...)}
}

// checkSynapse follows Synapse's exchange_third_party_invite and
// _check_signature: every public key of the invite (legacy public_key first),
// every server name in signed.signatures, every ed25519: key id; then the
// key's key_validity_url must answer {"valid": true}.
func (s *Sim) checkSynapse(r *http.Request, inv onbindInvite) *simError {
	var signed map[string]json.RawMessage
	if err := json.Unmarshal(inv.Signed, &signed); err != nil {
		return fail(400, "M_BAD_JSON", "signed is not an object")
	}
	var token, mxid string
	if json.Unmarshal(signed["token"], &token) != nil || token == "" {
		return fail(400, "M_MISSING_PARAM", "signed.token missing")
	}
	_ = json.Unmarshal(signed["mxid"], &mxid)
	s.mu.Lock()
	ev, ok := s.invites[inv.RoomID+"\x00"+token]
	s.mu.Unlock()
	if !ok {
		return fail(403, "M_FORBIDDEN", "Could not find invite")
	}
	if ev.Sender != inv.Sender {
		return fail(403, "M_FORBIDDEN", "sender does not match the invite event")
	}
	if mxid != inv.MXID {
		return fail(403, "M_FORBIDDEN", "signed.mxid does not match")
	}
	order, err := signatureOrder(signed["signatures"])
	if err != nil || len(order) == 0 {
		return fail(403, "M_FORBIDDEN", "no signatures")
	}
	type cand struct{ pub, validity string }
	var cands []cand
	if ev.PublicKey != "" {
		cands = append(cands, cand{ev.PublicKey, ev.KeyValidityURL})
	}
	for _, pk := range ev.PublicKeys {
		cands = append(cands, cand{pk.PublicKey, pk.KeyValidityURL})
	}
	// Synapse: for each public key, the first ed25519 signature (in the
	// order received) is tried; any failure moves on to the next key.
	var lastErr *simError
	for _, c := range cands {
		pub, err := keys.DecodeBase64(c.pub)
		if err != nil {
			continue
		}
		var first *[2]string
		for i := range order {
			if strings.HasPrefix(order[i][1], "ed25519:") {
				first = &order[i]
				break
			}
		}
		if first == nil {
			break
		}
		if keys.VerifyJSON(inv.Signed, first[0], first[1], pub) != nil {
			continue
		}
		valid, err := s.keyValid(r, c.validity, c.pub)
		if err != nil {
			lastErr = fail(502, "M_UNKNOWN", "key_validity_url unreachable: %v", err)
			continue
		}
		if !valid {
			lastErr = fail(403, "M_FORBIDDEN", "public key is not valid")
			continue
		}
		return nil
	}
	if lastErr != nil {
		return lastErr
	}
	return fail(403, "M_FORBIDDEN", "No signature from a key of the invite")
}

// checkDendrite follows Dendrite: the invitee must be local, the room known,
// signed is re-marshalled through {mxid, token, signatures} and checked
// against public_keys only.
func (s *Sim) checkDendrite(inv onbindInvite) *simError {
	var signed struct {
		MXID       string                       `json:"mxid"`
		Token      string                       `json:"token"`
		Signatures map[string]map[string]string `json:"signatures"`
	}
	if err := json.Unmarshal(inv.Signed, &signed); err != nil {
		return fail(400, "M_BAD_JSON", "signed is not an object")
	}
	s.mu.Lock()
	local := s.users[inv.MXID]
	ev, ok := s.invites[inv.RoomID+"\x00"+signed.Token]
	s.mu.Unlock()
	if !strings.HasSuffix(inv.MXID, ":"+s.ServerName) || !local {
		return fail(400, "M_UNKNOWN", "the invitee is not a local user")
	}
	if !ok {
		return fail(400, "M_UNKNOWN", "unknown room or invite")
	}
	if ev.Sender != inv.Sender {
		return fail(400, "M_UNKNOWN", "sender does not match the invite event")
	}
	remarshalled, _ := json.Marshal(signed)
	for _, pk := range ev.PublicKeys {
		pub, err := keys.DecodeBase64(pk.PublicKey)
		if err != nil {
			continue
		}
		for server, byKey := range signed.Signatures {
			for keyID := range byKey {
				if strings.HasPrefix(keyID, "ed25519:") && keys.VerifyJSON(remarshalled, server, keyID, pub) == nil {
					return nil
				}
			}
		}
	}
	return fail(400, "M_UNKNOWN", "no valid signature on the invite")
}

// signatureOrder lists (server, key id) pairs of a signatures object in the
// order they appear, as Python's dicts keep them.
func signatureOrder(raw json.RawMessage) ([][2]string, error) {
	var out [][2]string
	dec := json.NewDecoder(bytes.NewReader(raw))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, errors.New("signatures is not an object")
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, err
		}
		server, _ := t.(string)
		if t, err := dec.Token(); err != nil || t != json.Delim('{') {
			return nil, errors.New("signatures entry is not an object")
		}
		for dec.More() {
			t, err := dec.Token()
			if err != nil {
				return nil, err
			}
			keyID, _ := t.(string)
			var sig string
			if err := dec.Decode(&sig); err != nil {
				return nil, err
			}
			out = append(out, [2]string{server, keyID})
		}
		if _, err := dec.Token(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (s *Sim) keyValid(r *http.Request, validityURL, pub string) (bool, error) {
	u, err := url.Parse(validityURL)
	if err != nil || u.Host == "" {
		return false, fmt.Errorf("bad key_validity_url")
	}
	q := u.Query()
	q.Set("public_key", pub)
	u.RawQuery = q.Encode()
	req, _ := http.NewRequestWithContext(r.Context(), http.MethodGet, u.String(), nil)
	resp, err := s.client.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	var v struct {
		Valid bool `json:"valid"`
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != 200 || json.Unmarshal(raw, &v) != nil {
		return false, fmt.Errorf("key_validity_url answered %d", resp.StatusCode)
	}
	return v.Valid, nil
}

func matrixErr(code, msg string) map[string]string {
	return map[string]string{"errcode": code, "error": msg}
}

func writeErr(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, matrixErr(code, msg))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	raw, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = io.Copy(w, bytes.NewReader(raw))
}

func hangUp(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic("hssim: cannot hijack")
	}
	conn, _, err := hj.Hijack()
	if err == nil {
		conn.Close()
	}
}
