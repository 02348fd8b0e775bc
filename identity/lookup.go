package identity

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/herald-im/herald/matrix"
	"github.com/herald-im/herald/store"
)

// Lookup algorithms, in the order hash_details lists them.
var lookupAlgorithms = []string{"none", "sha256"}

// MaxLookupAddresses caps one lookup request (the body cap allows about
// 11,000 sha256 hashes anyway).
const MaxLookupAddresses = 10000

// HashDetails serves GET /v2/hash_details, rotating the pepper first when
// lookup.pepper_rotation says it is due.
func (s *Service) HashDetails(c echo.Context) error {
	if _, err := s.RotatePepperIfDue(); err != nil {
		return err
	}
	pepper, _, err := s.Pepper()
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"algorithms": lookupAlgorithms, "lookup_pepper": pepper})
}

type lookupRequest struct {
	Algorithm *string   `json:"algorithm"`
	Pepper    *string   `json:"pepper"`
	Addresses *[]string `json:"addresses"`
}

// Lookup serves POST /v2/lookup.
func (s *Service) Lookup(c echo.Context) error {
	body, err := matrix.ReadBody(c)
	if err != nil {
		return err
	}
	req, ok := parseLookupFast(body)
	if !ok {
		req = lookupRequest{}
		if err := matrix.DecodeJSONBytes(body, &req); err != nil {
			return err
		}
	}
	var missing []string
	if req.Algorithm == nil {
		missing = append(missing, "algorithm", "")
	}
	if req.Pepper == nil {
		missing = append(missing, "pepper", "")
	}
	if req.Addresses == nil {
		missing = append(missing, "addresses", "")
	}
	if err := matrix.Require(missing...); err != nil {
		return err
	}
	// The answer is written as the index is read, without reflection or an
	// intermediate map: {"mappings": {...}}.
	var b bytes.Buffer
	b.Grow(32 + len(*req.Addresses)*40)
	b.WriteString(`{"mappings":{`)
	n := 0
	err = s.lookupEach(*req.Algorithm, *req.Pepper, *req.Addresses, func(address string, mxid []byte) {
		if n > 0 {
			b.WriteByte(',')
		}
		n++
		writeJSONString(&b, address)
		b.WriteByte(':')
		writeJSONString(&b, mxid)
	})
	if err != nil {
		return err
	}
	s.observeLookup("v2", len(*req.Addresses), n)
	b.WriteString("}}")
	// With its length known, net/http sends the answer as it is instead of
	// in chunks.
	c.Response().Header().Set(echo.HeaderContentLength, strconv.Itoa(b.Len()))
	return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, b.Bytes())
}

// parseLookupFast decodes the usual lookup body without reflection: one
// object with "algorithm", "pepper" (strings) and "addresses" (an array of
// strings), each at most once, in any order, every string plain printable
// ASCII without escapes. Anything else (other keys, null, escapes, non-ASCII,
// trailing data, ...) gives ok false, and the body goes through
// encoding/json, which then gives the same result or the precise error. The
// strings share one copy of the body.
func parseLookupFast(body []byte) (req lookupRequest, ok bool) {
	p := fastJSON{s: string(body)}
	if !p.skip('{') {
		return req, false
	}
	for {
		key, ok := p.str()
		if !ok || !p.skip(':') {
			return req, false
		}
		switch key {
		case "algorithm", "pepper":
			v, ok := p.str()
			if !ok {
				return req, false
			}
			dst := &req.Algorithm
			if key == "pepper" {
				dst = &req.Pepper
			}
			if *dst != nil {
				return req, false
			}
			*dst = &v
		case "addresses":
			if req.Addresses != nil || !p.skip('[') {
				return req, false
			}
			list := make([]string, 0, len(p.s)/48+1)
			if !p.skip(']') {
				for {
					v, ok := p.str()
					if !ok {
						return req, false
					}
					list = append(list, v)
					if p.skip(']') {
						break
					}
					if !p.skip(',') {
						return req, false
					}
				}
			}
			req.Addresses = &list
		default:
			return req, false
		}
		if p.skip('}') {
			break
		}
		if !p.skip(',') {
			return req, false
		}
	}
	p.ws()
	return req, p.i == len(p.s)
}

// fastJSON is the cursor of parseLookupFast.
type fastJSON struct {
	s string
	i int
}

func (p *fastJSON) ws() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// skip consumes c (after white space) if it is next.
func (p *fastJSON) skip(c byte) bool {
	p.ws()
	if p.i < len(p.s) && p.s[p.i] == c {
		p.i++
		return true
	}
	return false
}

// plainJSON marks the bytes parseLookupFast copies as they are: printable
// ASCII other than the quote and the backslash.
var plainJSON = func() (t [256]bool) {
	for c := 0x20; c < 0x7f; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// str reads a string of printable ASCII without escapes.
func (p *fastJSON) str() (string, bool) {
	p.ws()
	if p.i >= len(p.s) || p.s[p.i] != '"' {
		return "", false
	}
	start := p.i + 1
	end := strings.IndexByte(p.s[start:], '"')
	if end < 0 {
		return "", false
	}
	v := p.s[start : start+end]
	for i := 0; i < len(v); i++ {
		if !plainJSON[v[i]] {
			return "", false
		}
	}
	p.i = start + end + 1
	return v, true
}

// writeJSONString writes s as a JSON string: plain characters copied,
// anything else through encoding/json.
func writeJSONString[T string | []byte](b *bytes.Buffer, s T) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			raw, _ := json.Marshal(string(s))
			b.Write(raw)
			return
		}
	}
	b.WriteByte('"')
	b.Write([]byte(s))
	b.WriteByte('"')
}

// LookupHashed answers a v2 lookup: addresses in the algorithm's form,
// mapped to the Matrix IDs of those that are bound. On bbolt it costs one
// probe of the in-memory index per address, on PostgreSQL one statement
// probing the index's btree once per address, whatever the number of
// bindings.
func (s *Service) LookupHashed(algorithm, pepper string, addresses []string) (map[string]string, error) {
	mappings := make(map[string]string)
	err := s.lookupEach(algorithm, pepper, addresses, func(a string, mxid []byte) { mappings[a] = string(mxid) })
	if err != nil {
		return nil, err
	}
	return mappings, nil
}

// lookupEach is LookupHashed calling found, from one consistent view of the
// database, once for each distinct bound address (mxid is valid only during
// the call).
func (s *Service) lookupEach(algorithm, pepper string, addresses []string, found func(address string, mxid []byte)) error {
	if algorithm != "sha256" && algorithm != "none" {
		return matrix.InvalidParam("Unsupported algorithm: supported are none and sha256")
	}
	if len(addresses) > MaxLookupAddresses {
		return matrix.InvalidParam("Too many addresses in one lookup (at most %d)", MaxLookupAddresses)
	}
	current, _, err := s.Pepper()
	if err != nil {
		return err
	}
	if algorithm == "sha256" {
		// Each distinct address that decodes to a hash, once, in (nearly)
		// key order, so that bbolt's seeks go forward with one cursor. Each
		// hash sorts by a word of its top 50 bits and its position
		// (MaxLookupAddresses < 1<<14): an ordinary integer sort, and equal
		// addresses end up in one run of equal top bits, where they are
		// kept once.
		const posBits = 14
		const _ = uint(1<<posBits - MaxLookupAddresses) // fails to compile if it does not fit
		order := make([]uint64, 0, len(addresses))
		decoded := make([][32]byte, len(addresses))
		for i, a := range addresses {
			if base64.RawURLEncoding.DecodedLen(len(a)) != 32 {
				continue
			}
			if n, err := base64.RawURLEncoding.Decode(decoded[i][:], []byte(a)); err != nil || n != 32 {
				continue
			}
			order = append(order, binary.BigEndian.Uint64(decoded[i][:8])&^(1<<posBits-1)|uint64(i))
		}
		slices.Sort(order)
		keys := make([][32]byte, 0, len(order))
		asked := make([]string, 0, len(order))
		run := 0 // start of the run of equal top bits
	next:
		for j, x := range order {
			if j == 0 || order[j-1]>>posBits != x>>posBits {
				run = j
			}
			i := int(x & (1<<posBits - 1))
			for _, y := range order[run:j] {
				if addresses[y&(1<<posBits-1)] == addresses[i] {
					continue next
				}
			}
			keys = append(keys, decoded[i])
			asked = append(asked, addresses[i])
		}
		p, err := s.st.lookup(s.db, pepper, keys, func(i int, mxid []byte) { found(asked[i], mxid) })
		switch {
		case errors.Is(err, errIndexNotBuilt):
			s.opts.Log.Warn("lookup index not built: lookups seek every hash", "err", err)
			return nil
		case errors.Is(err, errWrongPepper):
			current = p
		case errors.Is(err, errNoPepper):
		default:
			return err
		}
		return matrix.InvalidPepper("Unknown or invalid pepper - has it been rotated?").
			With("algorithm", "sha256").With("pepper", current).With("lookup_pepper", current)
	}
	return s.db.View(func(tx *store.Tx) error {
		// Compare with the pepper of this very snapshot.
		p, err := s.pepperTx(tx)
		if errors.Is(err, errNoPepper) || (err == nil && p != pepper) {
			if err == nil {
				current = p
			}
			return matrix.InvalidPepper("Unknown or invalid pepper - has it been rotated?").
				With("algorithm", "sha256").With("pepper", current).With("lookup_pepper", current)
		}
		if err != nil {
			return err
		}
		seen := make(map[string]bool)
		var refs []bindingRef
		var asked []string
		for _, a := range addresses {
			i := strings.LastIndexByte(a, ' ')
			if i <= 0 || seen[a] {
				continue
			}
			seen[a] = true
			address, medium := a[:i], a[i+1:]
			refs = append(refs, bindingRef{medium, normalizeAddress(medium, address)})
			asked = append(asked, a)
		}
		bs, err := s.st.bindings(tx, refs)
		if err != nil {
			return err
		}
		for i, b := range bs {
			if b != nil {
				found(asked[i], []byte(b.MXID))
			}
		}
		return nil
	})
}

// LookupV1 serves GET /api/v1/lookup?medium=&address=: the signed
// association when the address is bound, {} otherwise.
func (s *Service) LookupV1(c echo.Context) error {
	medium, address := c.QueryParam("medium"), c.QueryParam("address")
	if err := matrix.Require("medium", medium, "address", address); err != nil {
		return err
	}
	b, err := s.BindingFor(medium, address)
	if err != nil {
		return err
	}
	if b == nil {
		s.observeLookup("v1", 1, 0)
		return c.JSON(http.StatusOK, struct{}{})
	}
	s.observeLookup("v1", 1, 1)
	signed, err := s.SignedAssociation(*b)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, signed)
}

// BulkLookupV1 serves POST /api/v1/bulk_lookup: {"threepids": [[medium,
// address], ...]} answered with {"threepids": [[medium, address, mxid], ...]}
// for the bound ones.
func (s *Service) BulkLookupV1(c echo.Context) error {
	var req struct {
		Threepids [][]string `json:"threepids"`
	}
	if err := matrix.DecodeJSON(c, &req); err != nil {
		return err
	}
	if req.Threepids == nil {
		return matrix.MissingParams("Missing parameter: threepids")
	}
	if len(req.Threepids) > MaxLookupAddresses {
		return matrix.InvalidParam("Too many threepids in one lookup (at most %d)", MaxLookupAddresses)
	}
	out := make([][]string, 0)
	refs := make([]bindingRef, len(req.Threepids))
	for i, p := range req.Threepids {
		if len(p) != 2 {
			return matrix.InvalidParam("Each threepid must be [medium, address]")
		}
		refs[i] = bindingRef{p[0], normalizeAddress(p[0], p[1])}
	}
	err := s.db.View(func(tx *store.Tx) error {
		bs, err := s.st.bindings(tx, refs)
		if err != nil {
			return err
		}
		for i, b := range bs {
			if b != nil {
				out = append(out, []string{req.Threepids[i][0], req.Threepids[i][1], b.MXID})
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.observeLookup("v1_bulk", len(req.Threepids), len(out))
	return c.JSON(http.StatusOK, map[string]any{"threepids": out})
}

func (s *Service) observeLookup(api string, addresses, matches int) {
	if s.opts.OnLookup != nil {
		s.opts.OnLookup(api, addresses, matches)
	}
}

// WarmLookups builds this process's in-memory copy of the lookup hash index
// now, at start-up, so that the first lookup does not wait for it (about a
// second at a million bindings). Lookups that arrive meanwhile are answered
// from storage, as they are whenever the copy is not built.
func (s *Service) WarmLookups(ctx context.Context) error {
	pepper, _, err := s.Pepper()
	if err != nil {
		return err
	}
	_, err = s.st.lookup(s.db, pepper, nil, func(int, []byte) {})
	if errors.Is(err, errWrongPepper) {
		err = nil // rotated meanwhile: the next lookup builds it
	}
	return err
}
