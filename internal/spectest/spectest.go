// Package spectest checks, in tests, that every response Herald gives matches
// the official Matrix OpenAPI files (the Identity Service API and the
// federation third-party invite endpoints).
//
// The spec folder is $MATRIX_SPEC_DIR, else ../shared/spec relative to the
// module root (the directory holding go.mod). It is loaded and compiled once
// per process. When neither exists (a fresh clone on its own), responses
// pass unchecked and one line on standard error says they were not
// validated; with CI=true a missing spec fails the test. A folder that is
// there but broken, or a MATRIX_SPEC_DIR naming no spec, always fails.
package spectest

import (
	"bytes"
	"fmt"
	"io"
	"mime"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

// Validate checks that a response to METHOD PATH with STATUS and BODY matches the spec.
// path is the full request path, e.g. "/_matrix/identity/v2/pubkey/ed25519:abc" or "/_matrix/identity/versions";
// query strings are ignored. Identity API paths and the federation third_party_invite paths are matched, with
// {param} templates. If the spec documents that status for that operation with an application/json schema, the
// body must validate. If the status is an error status (>=400) not documented for the operation, the body must
// validate against the standard error schema (429 against rate_limited.yaml). A 2xx status not documented for a
// spec'd operation is a failure. Paths outside the spec (v1 API, admin, /_herald/...) are not validated except
// that an error status with a JSON body must still be a valid Matrix error.
func Validate(t testing.TB, method, path string, status int, body []byte) {
	t.Helper()
	if msg := check(method, path, status, "", body); msg != "" {
		t.Errorf("%s", msg)
	}
}

// Handler wraps h so every response passing through it is validated against
// the spec (for tests that run the whole stack via httptest).
func Handler(t testing.TB, h http.Handler) http.Handler {
	t.Helper()
	if _, err := load(); err != nil && !unvalidated(err) {
		t.Fatalf("%v", err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &recorder{ResponseWriter: w}
		h.ServeHTTP(rec, r)
		status := rec.status
		if status == 0 {
			status = http.StatusOK
		}
		if msg := check(r.Method, r.URL.Path, status, w.Header().Get("Content-Type"), rec.body.Bytes()); msg != "" {
			t.Errorf("%s", msg)
		}
	})
}

// Transport wraps rt (http.DefaultTransport if nil) so every response it
// returns is validated against the spec (for tests that run a real server).
func Transport(t testing.TB, rt http.RoundTripper) http.RoundTripper {
	t.Helper()
	if _, err := load(); err != nil && !unvalidated(err) {
		t.Fatalf("%v", err)
	}
	if rt == nil {
		rt = http.DefaultTransport
	}
	return &transport{t: t, rt: rt}
}

type transport struct {
	t  testing.TB
	rt http.RoundTripper
}

func (tr *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := tr.rt.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil {
		return resp, err
	}
	if msg := check(req.Method, req.URL.Path, resp.StatusCode, resp.Header.Get("Content-Type"), body); msg != "" {
		tr.t.Errorf("%s", msg)
	}
	return resp, nil
}

// recorder passes a response through while keeping a copy of its status and body.
type recorder struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 && code >= 200 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	r.body.Write(b)
	return r.ResponseWriter.Write(b)
}

func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// methodAliases maps a method deployed software uses to the one the spec
// documents for the same endpoint (Synapse, Dendrite, sydent and ma1sd all
// POST to onbind, which the spec lists as PUT).
var methodAliases = map[string]string{
	"POST /_matrix/federation/v1/3pid/onbind": http.MethodPut,
}

// match finds the documented operation for method and path (nil if none).
// Of several matching templates, the one with the fewest {params} wins, so
// /pubkey/isvalid is not taken for /pubkey/{keyId}.
func (s *spec) match(method, path string) *operation {
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	segs := strings.Split(strings.Trim(path, "/"), "/")
	method = strings.ToUpper(method)
	if m, ok := methodAliases[method+" "+strings.TrimRight(path, "/")]; ok {
		method = m
	}
	var best *operation
	for _, op := range s.ops {
		if op.method != method || len(op.segments) != len(segs) {
			continue
		}
		ok := true
		for i, seg := range op.segments {
			if isParam(seg) {
				if segs[i] == "" {
					ok = false
					break
				}
			} else if seg != segs[i] {
				ok = false
				break
			}
		}
		if ok && (best == nil || op.params < best.params) {
			best = op
		}
	}
	return best
}

// lookup finds the documented response for status: exact code, then range
// ("4XX"), then "default".
func (op *operation) lookup(status int) *response {
	code := strconv.Itoa(status)
	if r, ok := op.responses[code]; ok {
		return r
	}
	if r, ok := op.responses[code[:1]+"XX"]; ok {
		return r
	}
	return op.responses["DEFAULT"]
}

// check validates one response and returns a failure message, or "" if it
// conforms. contentType is "" when unknown (Validate); then a body is JSON if
// it looks like JSON.
func check(method, path string, status int, contentType string, body []byte) string {
	s, err := load()
	if err != nil {
		if unvalidated(err) {
			return ""
		}
		return err.Error()
	}
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	isJSON, declared := jsonBody(contentType, body)
	head := strings.EqualFold(method, http.MethodHead)

	op := s.match(method, path)
	if op == nil {
		// Outside the spec: only JSON error bodies are checked.
		if status >= 400 && isJSON && !head {
			return validateBody(fmt.Sprintf("%s %s (not in the spec)", method, path), status, errorName(status), s.errorSchema(status), body)
		}
		return ""
	}

	what := fmt.Sprintf("%s %s -> %s", method, path, op)
	resp := op.lookup(status)
	switch {
	case resp != nil && resp.schema != nil:
		if contentType != "" && !declared {
			return fmt.Sprintf("spectest: %s status %d: Content-Type is %q, the spec documents application/json", what, status, contentType)
		}
		return validateBody(what, status, "the documented "+resp.key+" response schema", resp.schema, body)
	case resp == nil && status >= 200 && status < 300:
		return fmt.Sprintf("spectest: %s: status %d is not documented for this operation (documented: %s)", what, status, strings.Join(op.codes(), ", "))
	case status >= 400 && !head && (resp == nil || isJSON):
		// An undocumented error status (or one documented without a JSON
		// schema but answered with JSON) must be a Matrix error.
		if contentType != "" && !declared {
			return fmt.Sprintf("spectest: %s status %d: Content-Type is %q, a Matrix error must be application/json", what, status, contentType)
		}
		return validateBody(what, status, errorName(status), s.errorSchema(status), body)
	}
	return ""
}

func (s *spec) errorSchema(status int) *jsonschema.Schema {
	if status == http.StatusTooManyRequests {
		return s.rateLimited
	}
	return s.errSchema
}

func errorName(status int) string {
	if status == http.StatusTooManyRequests {
		return "the Matrix rate-limit error schema (" + rateLimitedFile + ")"
	}
	return "the standard Matrix error schema (" + errorFile + ")"
}

func (op *operation) codes() []string {
	var out []string
	for k := range op.responses {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// jsonBody says whether the body is to be treated as JSON, and whether the
// Content-Type declared JSON.
func jsonBody(contentType string, body []byte) (isJSON, declared bool) {
	if contentType != "" {
		mt, _, err := mime.ParseMediaType(contentType)
		if err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json")) {
			return true, true
		}
		return false, false
	}
	b := bytes.TrimSpace(body)
	return len(b) > 0 && (b[0] == '{' || b[0] == '['), false
}

var printer = message.NewPrinter(language.English)

func validateBody(what string, status int, against string, sch *jsonschema.Schema, body []byte) string {
	if len(bytes.TrimSpace(body)) == 0 {
		return fmt.Sprintf("spectest: %s status %d: empty body, want JSON matching %s", what, status, against)
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return fmt.Sprintf("spectest: %s status %d: body is not valid JSON (%v), want JSON matching %s", what, status, err, against)
	}
	err = sch.Validate(v)
	if err == nil {
		return ""
	}
	ve, ok := err.(*jsonschema.ValidationError)
	if !ok {
		return fmt.Sprintf("spectest: %s status %d: body does not match %s: %v", what, status, against, err)
	}
	var lines []string
	leaves(ve, &lines)
	return fmt.Sprintf("spectest: %s status %d: body does not match %s:\n\t%s", what, status, against, strings.Join(lines, "\n\t"))
}

// leaves collects one line per innermost failure, naming the JSON path of
// the failing value. Values from the body are not repeated (they may be
// addresses or tokens).
func leaves(e *jsonschema.ValidationError, out *[]string) {
	if len(e.Causes) > 0 {
		for _, c := range e.Causes {
			leaves(c, out)
		}
		return
	}
	var msg string
	switch k := e.ErrorKind.(type) {
	case *kind.Pattern:
		msg = fmt.Sprintf("value does not match pattern %q", k.Want)
	case *kind.Format:
		msg = fmt.Sprintf("value is not a valid %s", k.Want)
	default:
		msg = e.ErrorKind.LocalizedString(printer)
	}
	loc := "/" + strings.Join(escapeTokens(e.InstanceLocation), "/")
	if len(e.InstanceLocation) == 0 {
		loc = "(root)"
	}
	*out = append(*out, fmt.Sprintf("at %s: %s", loc, msg))
}

func escapeTokens(toks []string) []string {
	out := make([]string, len(toks))
	for i, t := range toks {
		t = strings.ReplaceAll(t, "~", "~0")
		out[i] = strings.ReplaceAll(t, "/", "~1")
	}
	return out
}
