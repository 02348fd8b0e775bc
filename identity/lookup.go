package identity

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"
	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/matrix"
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
	var req lookupRequest
	if err := decodeOnce(c, &req); err != nil {
		return err
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
	mappings, err := s.LookupHashed(*req.Algorithm, *req.Pepper, *req.Addresses)
	if err != nil {
		return err
	}
	return writeMappings(c, mappings)
}

// decodeOnce is matrix.DecodeJSON with a single parse of the body (lookups
// of thousands of addresses are the hot path): the same errors, M_NOT_JSON
// for malformed JSON and M_BAD_JSON for the wrong shape.
func decodeOnce(c echo.Context, v any) error {
	body, err := matrix.ReadBody(c)
	if err != nil {
		return err
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return matrix.DecodeJSONBytes(body, v) // the precise error
	}
	if err := json.Unmarshal(trimmed, v); err != nil {
		return matrix.DecodeJSONBytes(body, v)
	}
	return nil
}

// writeMappings writes {"mappings": {...}} without reflection.
func writeMappings(c echo.Context, mappings map[string]string) error {
	var b bytes.Buffer
	b.Grow(32 + len(mappings)*80)
	b.WriteString(`{"mappings":{`)
	first := true
	for k, v := range mappings {
		if !first {
			b.WriteByte(',')
		}
		first = false
		writeJSONString(&b, k)
		b.WriteByte(':')
		writeJSONString(&b, v)
	}
	b.WriteString("}}")
	return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, b.Bytes())
}

// writeJSONString writes s as a JSON string: plain characters copied,
// anything else through encoding/json.
func writeJSONString(b *bytes.Buffer, s string) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			raw, _ := json.Marshal(s)
			b.Write(raw)
			return
		}
	}
	b.WriteByte('"')
	b.WriteString(s)
	b.WriteByte('"')
}

// LookupHashed answers a v2 lookup: addresses in the algorithm's form,
// mapped to the Matrix IDs of those that are bound. It costs one index read
// per address, whatever the number of bindings.
func (s *Service) LookupHashed(algorithm, pepper string, addresses []string) (map[string]string, error) {
	if algorithm != "sha256" && algorithm != "none" {
		return nil, matrix.InvalidParam("Unsupported algorithm: supported are none and sha256")
	}
	if len(addresses) > MaxLookupAddresses {
		return nil, matrix.InvalidParam("Too many addresses in one lookup (at most %d)", MaxLookupAddresses)
	}
	current, _, err := s.Pepper()
	if err != nil {
		return nil, err
	}
	mappings := make(map[string]string)
	err = s.db.View(func(tx *bolt.Tx) error {
		// Compare with the pepper of this very snapshot: the index matches it.
		p, err := s.pepperTx(tx)
		if err != nil {
			return err
		}
		current = p
		if pepper != p {
			return matrix.InvalidPepper("Unknown or invalid pepper - has it been rotated?").
				With("algorithm", "sha256").With("pepper", p).With("lookup_pepper", p)
		}
		switch algorithm {
		case "sha256":
			idx := tx.Bucket(lookupHashBucket)
			var h [32]byte
			for _, a := range addresses {
				if base64.RawURLEncoding.DecodedLen(len(a)) != 32 {
					continue
				}
				if n, err := base64.RawURLEncoding.Decode(h[:], []byte(a)); err != nil || n != 32 {
					continue
				}
				if v := idx.Get(h[:]); v != nil {
					mappings[a] = string(v)
				}
			}
		case "none":
			bb := tx.Bucket(bindingsBucket)
			for _, a := range addresses {
				i := strings.LastIndexByte(a, ' ')
				if i <= 0 {
					continue
				}
				address, medium := a[:i], a[i+1:]
				raw := bb.Get(bindingKey(medium, normalizeAddress(medium, address)))
				if raw == nil {
					continue
				}
				var b Binding
				if err := json.Unmarshal(raw, &b); err != nil {
					return err
				}
				mappings[a] = b.MXID
			}
		}
		return nil
	})
	if err == errNoPepper {
		return nil, matrix.InvalidPepper("Unknown or invalid pepper - has it been rotated?").
			With("algorithm", "sha256").With("pepper", current).With("lookup_pepper", current)
	}
	return mappings, err
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
		return c.JSON(http.StatusOK, struct{}{})
	}
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
	err := s.db.View(func(tx *bolt.Tx) error {
		for _, p := range req.Threepids {
			if len(p) != 2 {
				return matrix.InvalidParam("Each threepid must be [medium, address]")
			}
			b, err := s.BindingTx(tx, p[0], p[1])
			if err != nil {
				return err
			}
			if b != nil {
				out = append(out, []string{p[0], p[1], b.MXID})
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"threepids": out})
}
