package matrix

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
)

func TestRedactEmail(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"alice@example.org": "a...@e...",
		"Ülrich@bücher.de":  "Ü...@b...",
		"@example.org":      "...@e...",
		"nobody":            "n...",
		"":                  "...",
		"a@b@c":             "a...@b...",
	} {
		if got := RedactEmail(in); got != want {
			t.Errorf("RedactEmail(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestUserIDs(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]bool{
		"@alice:hs.test": true, "@a:[::1]:8448": true,
		"alice:hs.test": false, "@:hs.test": false, "@alice": false, "@alice:": false,
		"@al ice:hs.test": false, "@alice\x00:hs.test": false, "@alice\u202e:hs.test": false, "@alice:hs.test/x": false,
		"@" + strings.Repeat("a", 250) + ":hs.test": false,
	} {
		if got := ValidUserID(in); got != want {
			t.Errorf("ValidUserID(%q) = %v", in, got)
		}
	}
	for in, want := range map[string]string{"@alice:HS.Test": "hs.test", "@alice:hs.test:8448": "hs.test:8448", "@alice": ""} {
		if got := ServerName(in); got != want {
			t.Errorf("ServerName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	e := LimitExceeded(1500)
	b := e.Body()
	if e.Status != 429 || b["errcode"] != "M_LIMIT_EXCEEDED" || b["retry_after_ms"] != int64(1500) {
		t.Errorf("LimitExceeded body %v", b)
	}
	base := BadJSON("x %d", 1)
	w := base.With("k", "v")
	if base.Extra != nil || w.Extra["k"] != "v" || w.Message != "x 1" {
		t.Error("With must copy")
	}
	wrapped := fmt.Errorf("ctx: %w", Forbidden("no"))
	if me, ok := AsError(wrapped); !ok || me.Status != http.StatusForbidden {
		t.Error("AsError through wrapping")
	}
	for code, want := range map[int]string{404: "M_UNRECOGNIZED", 405: "M_UNRECOGNIZED", 413: "M_TOO_LARGE", 429: "M_LIMIT_EXCEEDED", 401: "M_UNAUTHORIZED", 418: "M_UNKNOWN"} {
		if me := toMatrix(echo.NewHTTPError(code)); me.Code != want || me.Status != code {
			t.Errorf("echo %d -> %d %s", code, me.Status, me.Code)
		}
	}
	if me := toMatrix(errors.New("disk on fire")); me.Status != 500 || me.Message != "Internal server error" {
		t.Errorf("internal errors must not leak: %+v", me)
	}
	if err := Require("a", "x", "b", "", "c", ""); err == nil || err.(*Error).Message != "Missing parameters: b, c" {
		t.Errorf("Require: %v", err)
	}
	if Require("a", "x") != nil {
		t.Error("Require with everything present")
	}
}

func TestDecodeJSONBytes(t *testing.T) {
	t.Parallel()
	var v struct {
		A string `json:"a"`
	}
	for body, code := range map[string]string{
		"":          "M_NOT_JSON",
		"  ":        "M_NOT_JSON",
		"{":         "M_NOT_JSON",
		"[1]":       "M_BAD_JSON",
		"null":      "M_BAD_JSON",
		`{"a": 1}`:  "M_BAD_JSON",
		`{"a":"x"}`: "",
	} {
		err := DecodeJSONBytes([]byte(body), &v)
		got := ""
		if me, ok := AsError(err); ok {
			got = me.Code
		} else if err != nil {
			got = err.Error()
		}
		if got != code {
			t.Errorf("DecodeJSONBytes(%q) = %q, want %q", body, got, code)
		}
	}
}

// A cause given with Because reaches the log with the request and never the
// client, and errors.Is still sees it.
func TestErrorCauseIsLoggedNotShown(t *testing.T) {
	t.Parallel()
	secret := errors.New("homeserver said 502 to /_matrix/federation/v1/openid/userinfo")
	var logs bytes.Buffer
	e := echo.New()
	e.HTTPErrorHandler = ErrorHandler(slog.New(slog.NewTextHandler(&logs, nil)))
	e.GET("/refused", func(echo.Context) error { return Unauthorized("Could not verify the OpenID token").Because(secret) })
	e.GET("/failed", func(echo.Context) error { return Unknown("Internal server error").Because(secret) })
	for path, status := range map[string]int{"/refused": 401, "/failed": 500} {
		logs.Reset()
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != status || strings.Contains(rec.Body.String(), "502") || !strings.Contains(rec.Body.String(), `"errcode":"M_`) {
			t.Errorf("%s: %d %s", path, rec.Code, rec.Body)
		}
		if !strings.Contains(logs.String(), "homeserver said 502") || !strings.Contains(logs.String(), "path="+path) {
			t.Errorf("%s: cause not logged: %s", path, logs.String())
		}
	}
	err := fmt.Errorf("wrapped: %w", Forbidden("no").Because(secret))
	if me, ok := AsError(err); !ok || me.Cause() != secret || !errors.Is(err, secret) || me.Status != http.StatusForbidden {
		t.Error("the cause is not reachable through wrapping")
	}
	base := Forbidden("no")
	if base.Because(secret) == base || base.Cause() != nil {
		t.Error("Because must copy")
	}
}

// DecodeParams: one reader for JSON and form bodies, the same limit and
// errors whichever way the parameters came.
func TestDecodeParams(t *testing.T) {
	t.Parallel()
	type req struct {
		A string `json:"a"`
		B string `json:"b"`
	}
	const form = "application/x-www-form-urlencoded"
	big := `{"a":"` + strings.Repeat("x", MaxBodyBytes) + `"}`
	for _, c := range []struct {
		name, target, ctype, body string
		p                         Params
		want                      req
		code                      string
	}{
		{"json", "/", "", `{"a":"1","b":"2"}`, Params{}, req{"1", "2"}, ""},
		{"form by content type", "/", form, "a=1&b=2", Params{}, req{"1", "2"}, ""},
		{"form sniffed", "/", "application/json", "a=1", Params{SniffForm: true}, req{A: "1"}, ""},
		{"not sniffed", "/", "", "a=1", Params{}, req{}, "M_NOT_JSON"},
		{"query, body wins", "/?a=q&b=q", "", `{"a":"1"}`, Params{Query: true}, req{"1", "q"}, ""},
		{"query only", "/?a=q", "", "", Params{Query: true}, req{A: "q"}, ""},
		{"empty", "/", "", " ", Params{}, req{}, "M_NOT_JSON"},
		{"array", "/", "", `[1]`, Params{}, req{}, "M_BAD_JSON"},
		{"wrong type", "/", "", `{"a":1}`, Params{}, req{}, "M_BAD_JSON"},
		{"bad form", "/", form, "a=%zz", Params{}, req{}, "M_BAD_JSON"},
		{"too large", "/", "", big, Params{}, req{}, "M_TOO_LARGE"},
		{"too large form", "/", form, "a=" + strings.Repeat("x", MaxBodyBytes), Params{}, req{}, "M_TOO_LARGE"},
	} {
		r := httptest.NewRequest(http.MethodPost, c.target, strings.NewReader(c.body))
		if c.ctype != "" {
			r.Header.Set("Content-Type", c.ctype)
		}
		ec := echo.New().NewContext(r, httptest.NewRecorder())
		var got req
		err := DecodeParams(ec, &got, c.p)
		if me, _ := AsError(err); (c.code == "" && err != nil) || (c.code != "" && (me == nil || me.Code != c.code)) || got != c.want {
			t.Errorf("%s: %+v %v, want %+v %s", c.name, got, err, c.want, c.code)
		}
	}
}

// busyErr is a temporary condition that names its wait, as
// pgstore.ErrContention does.
type busyErr struct{}

func (busyErr) Error() string             { return "database too busy" }
func (busyErr) RetryAfter() time.Duration { return 750 * time.Millisecond }

// An error that says how long to wait (wrapped anywhere in a handler's
// error) is answered 429 M_LIMIT_EXCEEDED with that wait, not 500.
func TestBusyErrorsAnswerLimitExceeded(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	e := echo.New()
	e.HTTPErrorHandler = ErrorHandler(slog.New(slog.NewTextHandler(&logs, nil)))
	e.GET("/busy", func(echo.Context) error { return fmt.Errorf("binding: %w", busyErr{}) })
	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/busy", nil))
	if rec.Code != http.StatusTooManyRequests || !strings.Contains(rec.Body.String(), `"errcode":"M_LIMIT_EXCEEDED"`) ||
		!strings.Contains(rec.Body.String(), `"retry_after_ms":750`) {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	if !strings.Contains(logs.String(), "database too busy") {
		t.Errorf("cause not logged: %s", logs.String())
	}
}
