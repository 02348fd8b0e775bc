package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herald-im/herald/internal/hssim"
	"github.com/herald-im/herald/internal/spectest"
	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/mailer/smtptest"
)

// herald is the built binary running as a subprocess.
type herald struct {
	bin, config, url string
	cmd              *exec.Cmd
	out              *testenv.SyncBuffer
	client           *http.Client
}

// freePort is a loopback TCP port for a binary under test to listen on.
//
// The port is closed again before the binary binds it, so nothing may take
// it in between. A port from the kernel's ephemeral range (what
// 127.0.0.1:0 gives) can be: every outgoing connection of the tests running
// beside this one (to PostgreSQL, SMTP, a homeserver simulator) takes its
// local port from that range, and the binary's bind then fails with
// "address already in use". So the port comes from below the range, is
// never handed out twice in this process, and is checked free by binding it.
func freePort(t *testing.T) int {
	t.Helper()
	lo := ephemeralLow()
	portMu.Lock()
	defer portMu.Unlock()
	for range 1000 {
		port := freePortFloor + rand.IntN(lo-freePortFloor)
		if portsGiven[port] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		l.Close()
		portsGiven[port] = true
		return port
	}
	t.Fatalf("no free port in [%d, %d)", freePortFloor, lo)
	return 0
}

// freePortFloor is the lowest port freePort hands out: above the ports
// services on a developer's machine usually listen on.
const freePortFloor = 20000

var (
	portMu     sync.Mutex
	portsGiven = map[int]bool{}
)

// ephemeralLow is the first port of the kernel's ephemeral range (Linux's
// ip_local_port_range), 32768 where it cannot be read.
func ephemeralLow() int {
	lo := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > freePortFloor+1000 {
				lo = n
			}
		}
	}
	return lo
}

func (h *herald) start(t *testing.T) {
	t.Helper()
	h.cmd = exec.Command(h.bin, "-config", h.config, "serve")
	h.cmd.Stdout, h.cmd.Stderr = h.out, h.out
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "herald to listen", func() bool {
		resp, err := http.Get(h.url + "/_matrix/identity/versions")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

func (h *herald) stop(t *testing.T) {
	t.Helper()
	if h.cmd == nil {
		return
	}
	_ = h.cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- h.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("herald exited with %v", err)
		}
	case <-time.After(20 * time.Second):
		_ = h.cmd.Process.Kill()
		t.Errorf("herald did not stop on SIGINT")
	}
	h.cmd = nil
}

func (h *herald) do(t *testing.T, method, path string, body any, token string) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, h.url+path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, raw
}

// newBinary builds the herald binary and writes its config: an in-process
// SMTP server, the inviter's homeserver (hs.test) and the invitee's
// (simName), short federation and onbind timings. smtpExtra is indented YAML
// added to the smtp section, extra top-level YAML appended. It does not
// start Herald.
func newBinary(t *testing.T, smtpExtra, extra string) (h *herald, smtp *smtptest.Server, inviterHS, sim *hssim.Sim) {
	t.Helper()
	return newBinaryOn(t, testenv.StorageYAML(t), smtpExtra, extra)
}

// newBoltBinary is newBinary on bbolt whatever TEST_STORAGE says (no
// storage section): for a test of a feature only bbolt has, which says why
// next to it.
func newBoltBinary(t *testing.T, smtpExtra, extra string) (h *herald, smtp *smtptest.Server, inviterHS, sim *hssim.Sim) {
	t.Helper()
	return newBinaryOn(t, "", smtpExtra, extra)
}

// newBinaryOn is newBinary with storageYAML as the configuration's
// top-level storage section ("": bbolt).
func newBinaryOn(t *testing.T, storageYAML, smtpExtra, extra string) (h *herald, smtp *smtptest.Server, inviterHS, sim *hssim.Sim) {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "herald")
	build := exec.Command("go", "build", "-o", bin, "github.com/herald-im/herald/cmd/herald")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	smtp = smtptest.Start(t, smtptest.Options{})
	inviterHS = hssim.New(t, "hs.test", hssim.Synapse)
	sim = hssim.New(t, simName, hssim.Synapse)
	port := freePort(t)
	h = &herald{bin: bin, config: filepath.Join(dir, "herald.yaml"), url: fmt.Sprintf("http://127.0.0.1:%d", port), out: &testenv.SyncBuffer{},
		client: &http.Client{Timeout: 10 * time.Second, Transport: spectest.Transport(t, nil),
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	cfg := fmt.Sprintf(`server_name: herald.test
public_base_url: %s
listen: 127.0.0.1:%d
data_dir: %s
log:
  level: debug
smtp:
  host: %s
  port: %d
  security: none
  from: "Herald <herald@herald.test>"
%sfederation:
  allow_private_addresses: true
  timeout: 2s
  servers:
    hs.test: %s
    %s: %s
delivery:
  min_backoff: 20ms
  max_backoff: 100ms
%s%s`, h.url, port, filepath.Join(dir, "data"), smtp.Host, smtp.Port, smtpExtra, inviterHS.URL, simName, sim.URL, storageYAML, extra)
	if err := os.WriteFile(h.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return h, smtp, inviterHS, sim
}

// TestBinaryEndToEnd runs the built herald binary with a config file, an
// in-process SMTP server and two simulated homeservers (the inviter's and
// the invitee's), through the whole third-party invite; then again with the
// invitee's homeserver down for a while and Herald restarted in between.
func TestBinaryEndToEnd(t *testing.T) {
	h, smtp, inviterHS, sim := newBinary(t, "", "")
	t.Cleanup(func() {
		h.stop(t)
		if t.Failed() {
			t.Logf("herald output:\n%s", h.out.String())
		}
	})
	h.start(t)

	register := func(hs *hssim.Sim, mxid string) string {
		server := mxid[strings.Index(mxid, ":")+1:]
		status, body := h.do(t, "POST", "/_matrix/identity/v2/account/register", map[string]any{
			"access_token": hs.AddUser(mxid), "token_type": "Bearer", "matrix_server_name": server, "expires_in": 3600,
		}, "")
		var r struct{ Token string }
		if err := json.Unmarshal(body, &r); status != 200 || err != nil || r.Token == "" {
			t.Fatalf("register %s: %d %s", mxid, status, body)
		}
		return r.Token
	}
	storeInvite := func(tok, room, address string) {
		status, body := h.do(t, "POST", "/_matrix/identity/v2/store-invite", map[string]any{
			"medium": "email", "address": address, "room_id": room, "sender": alice,
			"room_alias": "", "room_avatar_url": "", "room_join_rules": "", "room_name": "Garden",
			"sender_display_name": "Alice", "sender_avatar_url": "",
		}, tok)
		if status != 200 {
			t.Fatalf("store-invite: %d %s", status, body)
		}
		if _, err := sim.AddStoreInviteAnswer(room, alice, h.url, body); err != nil {
			t.Fatal(err)
		}
	}
	validateAndBind := func(tok, mxid, address, secret string) {
		status, body := h.do(t, "POST", reqTokenPath, map[string]any{"client_secret": secret, "email": address, "send_attempt": 1}, tok)
		if status != 200 {
			t.Fatalf("requestToken: %d %s", status, body)
		}
		sid, _, token := tokenFromMail(t, waitMail(t, smtp, address, "Confirm", 0))
		status, body = h.do(t, "POST", submitPath, map[string]any{"sid": sid, "client_secret": secret, "token": token}, tok)
		if status != 200 {
			t.Fatalf("submitToken: %d %s", status, body)
		}
		status, body = h.do(t, "POST", "/_matrix/identity/v2/3pid/bind", map[string]any{"sid": sid, "client_secret": secret, "mxid": mxid}, tok)
		if status != 200 || !strings.Contains(string(body), `"signatures"`) {
			t.Fatalf("bind: %d %s", status, body)
		}
	}
	acceptedFor := func(mxid string) int {
		n := 0
		for _, a := range sim.Accepted() {
			if a.MXID == mxid {
				n++
			}
		}
		return n
	}

	// 1. The whole invite with everything up.
	atok := register(inviterHS, alice)
	bob := "@bob:" + simName
	btok := register(sim, bob)
	storeInvite(atok, "!garden:hs.test", "bob@example.org")
	invite := waitMail(t, smtp, "bob@example.org", "", 0)
	if !strings.Contains(invite.Text, "Garden") || !strings.Contains(invite.Text, "sign-ed25519") {
		t.Fatalf("invite email:\n%s", invite.Text)
	}
	validateAndBind(btok, bob, "bob@example.org", "bobsecret")
	waitFor(t, "bob's invite to be accepted", func() bool { return acceptedFor(bob) == 1 })
	status, body := h.do(t, "GET", "/_matrix/identity/v2/hash_details", nil, atok)
	var hd struct {
		Pepper string `json:"lookup_pepper"`
	}
	_ = json.Unmarshal(body, &hd)
	status, body = h.do(t, "POST", "/_matrix/identity/v2/lookup", map[string]any{
		"addresses": []string{"bob@example.org email"}, "algorithm": "none", "pepper": hd.Pepper,
	}, atok)
	if status != 200 || !strings.Contains(string(body), bob) {
		t.Fatalf("lookup: %d %s", status, body)
	}
	status, body = h.do(t, "POST", "/_matrix/identity/v2/store-invite", map[string]any{
		"medium": "email", "address": "bob@example.org", "room_id": "!again:hs.test", "sender": alice,
	}, atok)
	expectErr(t, status, body, 400, "M_THREEPID_IN_USE")

	// 2. The invitee's homeserver is down at bind time; Herald restarts
	// while retrying; the invite still arrives, once.
	carol := "@carol:" + simName
	ctok := register(sim, carol)
	storeInvite(atok, "!porch:hs.test", "carol@example.org")
	sim.Down(true)
	validateAndBind(ctok, carol, "carol@example.org", "carolsecret")
	waitFor(t, "failed onbind attempts", func() bool { return len(sim.Calls()) >= 3 })
	h.stop(t)
	sim.Down(false)
	h.start(t)
	waitFor(t, "carol's invite to be accepted", func() bool { return acceptedFor(carol) == 1 })
	waitFor(t, "the delivery to be recorded", func() bool { return strings.Count(h.out.String(), "onbind delivered") >= 2 })

	// Restart again and deliver one more: nothing is delivered twice.
	h.stop(t)
	h.start(t)
	dave := "@dave:" + simName
	dtok := register(sim, dave)
	storeInvite(atok, "!shed:hs.test", "dave@example.org")
	validateAndBind(dtok, dave, "dave@example.org", "davesecret")
	waitFor(t, "dave's invite to be accepted", func() bool { return acceptedFor(dave) == 1 })
	if acceptedFor(bob) != 1 || acceptedFor(carol) != 1 || len(sim.Accepted()) != 3 {
		t.Fatalf("accepted %+v", sim.Accepted())
	}
	if out := h.out.String(); strings.Contains(out, "bob@example.org") || strings.Contains(out, "carol@example.org") {
		t.Fatalf("an email address was logged in clear")
	}
}
