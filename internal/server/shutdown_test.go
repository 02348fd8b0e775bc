package server_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/internal/testenv"
)

// TestAdminShutdownBeforeDatabaseCloses: a console request in flight on
// admin.listen when Herald is told to stop is answered from the open
// database. Run returns only after the admin listener's requests have ended,
// so the Close that follows it (as in `herald serve`) cannot close the
// database under them.
func TestAdminShutdownBeforeDatabaseCloses(t *testing.T) {
	t.Parallel()
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.Listen = "127.0.0.1:0"
	cfg.Admin.Listen = "127.0.0.1:0"
	cfg.Admin.APITokens = []config.Secret{adminToken}
	var logs testenv.SyncBuffer
	a, err := server.New(&cfg, slog.New(slog.NewTextHandler(&logs, nil)), server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runDone, closed := make(chan error, 1), make(chan error, 1)
	go func() {
		runDone <- a.Serve(ctx, ln)
		closed <- a.Close()
	}()
	addr := waitLog(t, &logs, regexp.MustCompile(`admin console listening"? addr=(\S+)`))

	// A console request whose handler is reading its body: with
	// "Expect: 100-continue" the server says "100 Continue" only when the
	// handler asks for the body, so the request is in flight from then on.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := `{"address":"nobody@example.org","confirm":"nobody@example.org"}`
	fmt.Fprintf(conn, "POST /admin/api/bindings/erase HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"+
		"Content-Type: application/json\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n", addr, adminToken, len(body))
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100") {
		t.Fatalf("no 100 Continue: %q %v", line, err)
	}
	if blank, _ := br.ReadString('\n'); blank != "\r\n" {
		t.Fatalf("after 100 Continue: %q", blank)
	}

	// Stop Herald, and wait until the admin listener has stopped accepting
	// connections: its shutdown has begun.
	cancel()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("the admin listener still accepts connections after shutdown began")
		}
	}
	select {
	case err := <-runDone:
		t.Fatalf("Serve returned (%v) with a console request in flight; Close would close the database under it", err)
	default:
	}

	// The request ends normally, from the open database.
	if _, err := conn.Write([]byte(body)); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("console request during shutdown: %d", res.StatusCode)
	}
	if err := <-runDone; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve: %v", err)
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// waitLog waits for a log line matching re and returns its first group.
func waitLog(t *testing.T, logs *testenv.SyncBuffer, re *regexp.Regexp) string {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if m := re.FindStringSubmatch(logs.String()); m != nil {
			return m[1]
		}
	}
	t.Fatalf("no log line matching %s in: %s", re, logs.String())
	return ""
}
