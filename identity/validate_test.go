package identity_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/matrix"
	"github.com/herald-im/herald/store"
)

type nopSender struct{}

func (nopSender) Send(context.Context, string, []string, []byte) error { return nil }

// A validation email that cannot be queued answers M_EMAIL_SEND_ERROR (400,
// as the spec documents for requestToken), without internal details.
func TestRequestTokenEmailSendError(t *testing.T) {
	dir := t.TempDir()
	bdb, err := store.Open(filepath.Join(dir, "a"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	db := store.NewBolt(bdb)
	t.Cleanup(func() { db.Close() })
	bother, err := store.Open(filepath.Join(dir, "b"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	other := store.NewBolt(bother)
	t.Cleanup(func() { other.Close() })
	log := slog.New(slog.DiscardHandler)
	// A queue whose buckets live in another database: Enqueue inside the
	// session's transaction fails, as any storage failure of the outbox would.
	q, err := mailer.Open(other, mailer.Options{Sender: nopSender{}, From: "herald@id.example.org"}, log)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := identity.New(db, identity.Options{Log: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.EnableValidation(identity.ValidationOptions{Mail: q, BaseURL: "https://id.example.org", ServerName: "id.example.org"}); err != nil {
		t.Fatal(err)
	}
	e := echo.New()
	e.HTTPErrorHandler = matrix.ErrorHandler(log)
	e.POST("/requestToken", svc.RequestEmailToken)
	post := func(body string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodPost, "/requestToken", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, req)
		return rec
	}
	rec := post(`{"client_secret":"sec","email":"a@example.org","send_attempt":1}`)
	if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), `"M_EMAIL_SEND_ERROR"`) {
		t.Fatalf("got %d %s, want 400 M_EMAIL_SEND_ERROR", rec.Code, rec.Body)
	}
	if strings.Contains(rec.Body.String(), "bucket") {
		t.Errorf("internal error text shown: %s", rec.Body)
	}
	// An invalid address is M_INVALID_EMAIL, before any mail.
	rec = post(`{"client_secret":"sec","email":"not an address","send_attempt":1}`)
	if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), `"M_INVALID_EMAIL"`) {
		t.Fatalf("got %d %s, want 400 M_INVALID_EMAIL", rec.Code, rec.Body)
	}
}
