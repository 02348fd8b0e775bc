package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herald-im/herald/internal/spectest"
	"github.com/herald-im/herald/internal/testenv"
)

// TestBackupUnderLoadRestores runs `herald backup DIR` against the built
// binary while store-invites keep arriving over keep-alive connections,
// starts a second Herald on the copy, and finds there every invite that had
// been acknowledged before the backup began (its ephemeral key valid, its
// address listed) and the same signing keys.
func TestBackupUnderLoadRestores(t *testing.T) {
	// bbolt: herald backup snapshots the bbolt file; PostgreSQL is backed up with its own tools.
	h, _, inviterHS, _ := newBoltBinary(t, "", `invites:
  rate_limits:
    sender: {per_hour: 0}
    room: {per_hour: 0}
    address: {per_hour: 0}
    homeserver: {per_hour: 0}
`)
	var restored *herald
	t.Cleanup(func() {
		h.stop(t)
		if restored != nil {
			restored.stop(t)
		}
		if t.Failed() {
			t.Logf("herald output:\n%s", h.out.String())
			if restored != nil {
				t.Logf("restored herald output:\n%s", restored.out.String())
			}
		}
	})
	h.start(t)
	status, body := h.do(t, "POST", "/_matrix/identity/v2/account/register", map[string]any{
		"access_token": inviterHS.AddUser(alice), "token_type": "Bearer", "matrix_server_name": "hs.test", "expires_in": 3600,
	}, "")
	var reg struct{ Token string }
	if err := json.Unmarshal(body, &reg); status != 200 || err != nil {
		t.Fatalf("register: %d %s", status, body)
	}

	type ack struct{ address, ephemeral string }
	var (
		mu    sync.Mutex
		acked []ack // in the order the answers arrived
		stop  = make(chan struct{})
		wg    sync.WaitGroup
		errs  = make(chan error, 4)
	)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				addr := fmt.Sprintf("load%d-%d@example.org", w, i)
				raw, _ := json.Marshal(map[string]any{"medium": "email", "address": addr, "room_id": fmt.Sprintf("!load%d:hs.test", w), "sender": alice})
				req, _ := http.NewRequest("POST", h.url+"/_matrix/identity/v2/store-invite", bytes.NewReader(raw))
				req.Header.Set("Authorization", "Bearer "+reg.Token)
				resp, err := h.client.Do(req)
				if err != nil {
					errs <- err
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				var ans struct {
					PublicKeys []struct {
						PublicKey string `json:"public_key"`
					} `json:"public_keys"`
				}
				if err := json.Unmarshal(b, &ans); resp.StatusCode != 200 || err != nil || len(ans.PublicKeys) != 2 {
					errs <- fmt.Errorf("store-invite: %d %s", resp.StatusCode, b)
					return
				}
				mu.Lock()
				acked = append(acked, ack{addr, ans.PublicKeys[1].PublicKey})
				mu.Unlock()
			}
		}()
	}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	waitFor(t, "invites under load", func() bool { return count() >= 50 })

	// Everything acknowledged up to here must be in the backup.
	mu.Lock()
	before := append([]ack(nil), acked...)
	mu.Unlock()
	dir := filepath.Join(filepath.Dir(h.config), "backup")
	start := time.Now()
	out := h.mustCLI(t, "", "backup", dir)
	took := time.Since(start)
	during := count() - len(before)
	waitFor(t, "more invites after the backup", func() bool { return count() >= len(before)+during+20 })
	close(stop)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	if !strings.Contains(out, "backed up to "+dir) || strings.Contains(h.out.String(), "level=ERROR") {
		t.Fatalf("backup: %s", out)
	}
	t.Logf("backup took %s with %d invites acknowledged before it, %d during it, %d in all; %s", took, len(before), during, count(), strings.TrimSpace(strings.Split(out, "\n")[0]))
	if _, err := os.Stat(filepath.Join(dir, "control.sock")); !os.IsNotExist(err) {
		t.Fatalf("the backup holds the control socket: %v", err)
	}

	// A second Herald on the copy.
	port := freePort(t)
	raw, err := os.ReadFile(h.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.NewReplacer(h.url, fmt.Sprintf("http://127.0.0.1:%d", port),
		strings.TrimPrefix(h.url, "http://"), fmt.Sprintf("127.0.0.1:%d", port),
		"data_dir: "+h.dataDir(), "data_dir: "+dir).Replace(string(raw))
	restored = &herald{bin: h.bin, config: filepath.Join(filepath.Dir(h.config), "restored.yaml"), url: fmt.Sprintf("http://127.0.0.1:%d", port),
		out: &testenv.SyncBuffer{}, client: &http.Client{Timeout: 10 * time.Second, Transport: spectest.Transport(t, nil)}}
	if err := os.WriteFile(restored.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	restored.start(t)

	// The same keys, served by the copy.
	keysHere, keysThere := h.mustCLI(t, "", "keys", "list"), restored.mustCLI(t, "", "keys", "list")
	if keysHere != keysThere || len(keyIDs(keysThere)) == 0 {
		t.Fatalf("keys differ:\n%s\nrestored:\n%s", keysHere, keysThere)
	}
	for _, id := range keyIDs(keysThere) {
		_, a := h.do(t, "GET", "/_matrix/identity/v2/pubkey/"+url.PathEscape(id), nil, "")
		status, b := restored.do(t, "GET", "/_matrix/identity/v2/pubkey/"+url.PathEscape(id), nil, "")
		if status != 200 || !bytes.Equal(a, b) {
			t.Fatalf("key %s: %s, restored %d %s", id, a, status, b)
		}
	}
	// Every invite acknowledged before the backup began.
	list := restored.mustCLI(t, "", "invites", "list", "--state", "pending", "--limit", "10000")
	for _, a := range before {
		if !strings.Contains(list, " "+a.address+"\n") {
			t.Errorf("invite for %s missing from the restored data dir", a.address)
		}
		status, b := restored.do(t, "GET", "/_matrix/identity/v2/pubkey/ephemeral/isvalid?public_key="+url.QueryEscape(a.ephemeral), nil, "")
		if status != 200 || !strings.Contains(string(b), `"valid":true`) {
			t.Errorf("invite for %s: ephemeral key not valid on the copy: %d %s", a.address, status, b)
		}
	}
	// Nothing was lost from the original meanwhile either.
	if n := strings.Count(h.mustCLI(t, "", "invites", "list", "--limit", "10000"), "@example.org"); n != count() {
		t.Errorf("original lists %d invites, %d acknowledged", n, count())
	}
}
