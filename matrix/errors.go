// Package matrix holds what every Herald feature package shares when it speaks
// the Matrix Identity Service API: the error type (whose constructors fix the
// HTTP status and errcode together), the Echo error handler, and the JSON
// request decoder.
package matrix

import (
	"errors"
	"fmt"
	"net/http"
)

// Error is a Matrix API error: {"errcode": ..., "error": ...} with an HTTP
// status. Extra carries additional top-level keys some errors need
// (retry_after_ms, mxid, algorithm and pepper, ...). Build one with the
// constructors below, never as a literal: they fix Status and Code together.
//
// An Error may carry an internal cause (Because): what went wrong inside
// Herald or with a remote server. ErrorHandler logs it with the request; the
// client sees only Code, Message and Extra.
type Error struct {
	Status  int            `json:"-"`
	Code    string         `json:"errcode"`
	Message string         `json:"error"`
	Extra   map[string]any `json:"-"`
	cause   error
}

// Error is the errcode and message, and the cause when there is one (for
// logs: the client's body is Body).
func (e *Error) Error() string {
	if e.cause != nil {
		return e.Code + ": " + e.Message + ": " + e.cause.Error()
	}
	return e.Code + ": " + e.Message
}

// Because returns a copy of e carrying err as its internal cause, logged by
// ErrorHandler and never sent to the client. The cause must not contain an
// address, token or key (TestLogsKeepSecrets reads the logs).
func (e *Error) Because(err error) *Error {
	c := *e
	c.cause = err
	return &c
}

// Cause is the internal cause given to Because (nil if none).
func (e *Error) Cause() error { return e.cause }

// Unwrap makes errors.Is and errors.As see the cause.
func (e *Error) Unwrap() error { return e.cause }

// Body is the JSON object sent for this error.
func (e *Error) Body() map[string]any {
	m := make(map[string]any, 2+len(e.Extra))
	for k, v := range e.Extra {
		m[k] = v
	}
	m["errcode"] = e.Code
	m["error"] = e.Message
	return m
}

// With returns a copy of e carrying an extra top-level key.
func (e *Error) With(key string, value any) *Error {
	c := *e
	c.Extra = make(map[string]any, len(e.Extra)+1)
	for k, v := range e.Extra {
		c.Extra[k] = v
	}
	c.Extra[key] = value
	return &c
}

func newErr(status int, code string) func(format string, args ...any) *Error {
	return func(format string, args ...any) *Error {
		msg := format
		if len(args) > 0 {
			msg = fmt.Sprintf(format, args...)
		}
		return &Error{Status: status, Code: code, Message: msg}
	}
}

// Constructors: each fixes status and errcode so no call site can pair them wrongly.
var (
	Unrecognized          = newErr(http.StatusBadRequest, "M_UNRECOGNIZED")
	NotFound              = newErr(http.StatusNotFound, "M_NOT_FOUND")
	NotJSON               = newErr(http.StatusBadRequest, "M_NOT_JSON")
	BadJSON               = newErr(http.StatusBadRequest, "M_BAD_JSON")
	MissingParams         = newErr(http.StatusBadRequest, "M_MISSING_PARAMS")
	InvalidParam          = newErr(http.StatusBadRequest, "M_INVALID_PARAM")
	InvalidEmail          = newErr(http.StatusBadRequest, "M_INVALID_EMAIL")
	InvalidPepper         = newErr(http.StatusBadRequest, "M_INVALID_PEPPER")
	ThreepidInUse         = newErr(http.StatusBadRequest, "M_THREEPID_IN_USE")
	TokenIncorrect        = newErr(http.StatusBadRequest, "M_TOKEN_INCORRECT")
	SessionExpired        = newErr(http.StatusBadRequest, "M_SESSION_EXPIRED")
	NoValidSession        = newErr(http.StatusNotFound, "M_NO_VALID_SESSION")
	SessionNotValidated   = newErr(http.StatusBadRequest, "M_SESSION_NOT_VALIDATED")
	EmailSendError        = newErr(http.StatusBadRequest, "M_EMAIL_SEND_ERROR")
	Unauthorized          = newErr(http.StatusUnauthorized, "M_UNAUTHORIZED")
	UnknownToken          = newErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
	ForbiddenUnauthorized = newErr(http.StatusForbidden, "M_UNAUTHORIZED")
	Forbidden             = newErr(http.StatusForbidden, "M_FORBIDDEN")
	TermsNotSigned        = newErr(http.StatusForbidden, "M_TERMS_NOT_SIGNED")
	TooLarge              = newErr(http.StatusRequestEntityTooLarge, "M_TOO_LARGE")
	Unknown               = newErr(http.StatusInternalServerError, "M_UNKNOWN")
	ServerUnavailable     = newErr(http.StatusServiceUnavailable, "M_UNKNOWN")
)

var (
	// UnrecognizedNotFound is 404 M_UNRECOGNIZED: a path Herald does not
	// serve, or (as sydent answers sign-ed25519) a token it does not know.
	UnrecognizedNotFound = newErr(http.StatusNotFound, "M_UNRECOGNIZED")
	// UnrecognizedMethod is 405 M_UNRECOGNIZED: a known path, the wrong method.
	UnrecognizedMethod = newErr(http.StatusMethodNotAllowed, "M_UNRECOGNIZED")
	tooManyRequests    = newErr(http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
)

// NotFoundRoute is the answer for a path Herald does not serve.
func NotFoundRoute() *Error { return UnrecognizedNotFound("Unrecognized request") }

// MethodNotAllowed is the answer for a known path with the wrong method.
func MethodNotAllowed() *Error { return UnrecognizedMethod("Unrecognized request: method not allowed") }

// LimitExceeded is a 429 M_LIMIT_EXCEEDED carrying retry_after_ms.
func LimitExceeded(retryAfterMS int64) *Error {
	return tooManyRequests("Too many requests").With("retry_after_ms", retryAfterMS)
}

// AsError reports whether err is (or wraps) a *Error.
func AsError(err error) (*Error, bool) {
	var me *Error
	ok := errors.As(err, &me)
	return me, ok
}
