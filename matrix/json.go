package matrix

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/labstack/echo/v4"
)

// MaxBodyBytes caps every request body (sydent uses 512 KiB too).
const MaxBodyBytes = 512 << 10

// DecodeJSON reads the request body as one JSON object into v.
//
// Unlike echo's Bind it needs no Content-Type (the spec lets clients omit it),
// refuses an empty body, and tells malformed JSON (M_NOT_JSON) apart from JSON
// of the wrong shape (M_BAD_JSON). Required keys are the caller's business:
// see Require.
func DecodeJSON(c echo.Context, v any) error {
	body, err := ReadBody(c)
	if err != nil {
		return err
	}
	return DecodeJSONBytes(body, v)
}

// ReadBody reads the whole (size-capped) request body.
func ReadBody(c echo.Context) ([]byte, error) {
	req := c.Request()
	r := http.MaxBytesReader(c.Response(), req.Body, MaxBodyBytes)
	body, err := readAll(r, req.ContentLength)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, TooLarge("Request body too large")
		}
		return nil, NotJSON("Could not read request body")
	}
	return body, nil
}

// readAll is io.ReadAll starting with room for the announced length (a
// 1,000-address lookup is 45 KB: no regrowing through 512, 1K, 2K, ...).
func readAll(r io.Reader, length int64) ([]byte, error) {
	size := 512
	if length > 0 && length < MaxBodyBytes {
		size = int(length) + 1 // +1: the read that sees EOF needs room
	}
	b := make([]byte, 0, size)
	for {
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			return b, err
		}
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
	}
}

// DecodeJSONBytes decodes body (which must be one JSON object) into v.
// The common case, a well-formed object of the right shape, is parsed once;
// anything else is examined again to tell malformed JSON (M_NOT_JSON) from
// JSON of the wrong shape (M_BAD_JSON).
func DecodeJSONBytes(body []byte, v any) error {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) > 0 && trimmed[0] == '{' && json.Unmarshal(trimmed, v) == nil {
		return nil
	}
	if len(trimmed) == 0 {
		return NotJSON("Request body is empty; expected a JSON object")
	}
	if !json.Valid(trimmed) {
		return NotJSON("Request body is not valid JSON")
	}
	if trimmed[0] != '{' {
		return BadJSON("Request body must be a JSON object")
	}
	if err := json.Unmarshal(trimmed, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return BadJSON("Wrong type for %q", te.Field)
		}
		return BadJSON("Request body has the wrong shape")
	}
	return nil
}

// Params says where DecodeParams finds a request's parameters besides a JSON
// body.
type Params struct {
	// SniffForm takes a body that does not start with "{" as form-encoded
	// whatever its Content-Type (Dendrite's v1 store-invite). Without it
	// only a body sent as application/x-www-form-urlencoded is a form.
	SniffForm bool
	// Query adds the query string's parameters; the body's win.
	Query bool
}

// DecodeParams decodes a request's parameters into v as one JSON object:
// the body as JSON (see DecodeJSON) or, where it is form-encoded
// (deprecated, but the spec allows it and homeservers still send it), each
// field's first value as a JSON string. The body limit and the errors are
// DecodeJSON's; a malformed form is M_BAD_JSON.
func DecodeParams(c echo.Context, v any, p Params) error {
	body, err := ReadBody(c)
	if err != nil {
		return err
	}
	trimmed := bytes.TrimSpace(body)
	form := strings.HasPrefix(c.Request().Header.Get("Content-Type"), "application/x-www-form-urlencoded") ||
		(p.SniffForm && len(trimmed) > 0 && trimmed[0] != '{')
	if !form && !p.Query {
		return DecodeJSONBytes(body, v)
	}
	fields := map[string]json.RawMessage{}
	put := func(vals url.Values) {
		for k, v := range vals {
			if len(v) > 0 {
				raw, _ := json.Marshal(v[0])
				fields[k] = raw
			}
		}
	}
	if p.Query {
		put(c.Request().URL.Query())
	}
	switch {
	case form:
		vals, err := url.ParseQuery(string(trimmed))
		if err != nil {
			return BadJSON("Request body is neither JSON nor form-encoded")
		}
		put(vals)
	case len(trimmed) > 0 || !p.Query:
		var m map[string]json.RawMessage
		if err := DecodeJSONBytes(body, &m); err != nil {
			return err
		}
		for k, v := range m {
			fields[k] = v
		}
	}
	raw, err := json.Marshal(fields)
	if err != nil {
		return BadJSON("Request body has the wrong shape")
	}
	return DecodeJSONBytes(raw, v)
}

// Require answers M_MISSING_PARAMS naming the first key whose value is empty.
// pairs alternate key name and value.
func Require(pairs ...string) error {
	var missing []string
	for i := 0; i+1 < len(pairs); i += 2 {
		if pairs[i+1] == "" {
			missing = append(missing, pairs[i])
		}
	}
	if len(missing) > 0 {
		return MissingParams("Missing parameters: %s", strings.Join(missing, ", "))
	}
	return nil
}
