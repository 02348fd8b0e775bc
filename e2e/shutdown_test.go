package e2e

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// SIGTERM while a console request is in flight on admin.listen: the binary
// answers it from the open database, then exits 0. (Before, serving ended
// with the public listener and the database closed under the request,
// which answered 500.)
func TestAdminRequestInFlightAtSIGTERM(t *testing.T) {
	const token = "e2e-admin-token-0123456789abcdef0123456789"
	port, adminPort := freePort(t), freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", adminPort)
	s := serveHerald(t, []string{
		"HERALD_DATA_DIR=" + t.TempDir(), "HERALD_SERVER_NAME=herald.test",
		fmt.Sprintf("HERALD_LISTEN=127.0.0.1:%d", port), "HERALD_ADMIN_LISTEN=" + addr,
		"HERALD_ADMIN_API_TOKENS=[" + token + "]",
	}, "serve")
	waitFor(t, "the console listener", func() bool { return strings.Contains(s.log(), "admin console listening") })

	// "Expect: 100-continue": the server says "100 Continue" when the
	// handler starts reading the body, so the request is in flight then.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	body := `{"address":"nobody@example.org","confirm":"nobody@example.org"}`
	fmt.Fprintf(conn, "POST /admin/api/bindings/erase HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"+
		"Content-Type: application/json\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n", addr, token, len(body))
	br := bufio.NewReader(conn)
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "HTTP/1.1 100") {
		t.Fatalf("no 100 Continue: %q %v", line, err)
	}
	if blank, _ := br.ReadString('\n'); blank != "\r\n" {
		t.Fatalf("after 100 Continue: %q", blank)
	}

	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Shutdown has begun once the console stops accepting connections.
	waitFor(t, "the console listener to close", func() bool {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	select {
	case err := <-s.done:
		s.done <- err
		t.Fatalf("herald exited (%v) with a console request in flight\n%s", err, s.log())
	default:
	}
	if _, err := conn.Write([]byte(body)); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("console request during shutdown: %d\n%s", res.StatusCode, s.log())
	}
	select {
	case err := <-s.done:
		s.done <- err
		if err != nil {
			t.Fatalf("herald exited with %v after SIGTERM\n%s", err, s.log())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("herald did not exit after SIGTERM")
	}
	if strings.Contains(s.log(), "database not open") || strings.Contains(s.log(), "level=ERROR") {
		t.Errorf("errors at shutdown:\n%s", s.log())
	}
}
