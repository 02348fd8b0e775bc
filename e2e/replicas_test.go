package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/herald-im/herald/internal/hssim"
	"github.com/herald-im/herald/internal/pgtest"
	"github.com/herald-im/herald/internal/spectest"
	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/mailer/smtptest"
)

// cluster is several replicas of the built binary on one PostgreSQL
// database, each with its own data_dir, listen address and control socket,
// sharing one SMTP server and the two simulated homeservers.
type cluster struct {
	bin, dsn       string
	smtp           *smtptest.Server
	inviterHS, sim *hssim.Sim
	replicas       []*herald
	bbolt          bool // the replicas' storage: data_dir's bbolt file instead of PostgreSQL
}

func (c *cluster) storageYAML() string {
	if c.bbolt {
		return "storage:\n  backend: bbolt\n"
	}
	return fmt.Sprintf("storage:\n  backend: postgres\n  postgres:\n    dsn: %q\n", c.dsn)
}

// newCluster builds the binary and writes the configurations of n replicas
// on a fresh database (without starting them).
func newCluster(t *testing.T, n int, extra string) *cluster {
	t.Helper()
	c := &cluster{bin: builtHerald(t), dsn: pgtest.DSN(t),
		smtp: smtptest.Start(t, smtptest.Options{}), inviterHS: hssim.New(t, "hs.test", hssim.Synapse), sim: hssim.New(t, simName, hssim.Synapse)}
	for range n {
		dir := t.TempDir()
		port := freePort(t)
		h := &herald{bin: c.bin, config: filepath.Join(dir, "herald.yaml"), url: fmt.Sprintf("http://127.0.0.1:%d", port), out: &testenv.SyncBuffer{},
			client: &http.Client{Timeout: 10 * time.Second, Transport: spectest.Transport(t, nil),
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
		c.replicas = append(c.replicas, h)
		c.writeConfig(t, h, port, extra)
	}
	t.Cleanup(func() {
		for i, h := range c.replicas {
			if h.cmd != nil {
				h.kill(t)
			}
			if t.Failed() {
				t.Logf("replica %d output:\n%s", i, h.out.String())
			}
		}
	})
	return c
}

// writeConfig writes h's configuration: the cluster's database, SMTP server
// and homeservers, no rate limits, short retry backoffs, and extra.
func (c *cluster) writeConfig(t *testing.T, h *herald, port int, extra string) {
	t.Helper()
	cfg := fmt.Sprintf(`server_name: herald.test
public_base_url: %s
listen: 127.0.0.1:%d
data_dir: %s
log:
  level: info
smtp:
  host: %s
  port: %d
  security: none
  from: "Herald <herald@herald.test>"
  max_backoff: 50ms
  timeout: 2s
federation:
  allow_private_addresses: true
  timeout: 2s
  servers:
    hs.test: %s
    %s: %s
delivery:
  min_backoff: 20ms
  max_backoff: 100ms
%sinvites:
  rate_limits:
    sender: {per_hour: 0}
    room: {per_hour: 0}
    address: {per_hour: 0}
    homeserver: {per_hour: 0}
validation:
  rate_limits:
    address: {per_hour: 0}
    account: {per_hour: 0}
    client_ip: {per_hour: 0}
admin:
  api_tokens: [%q]
%s`, h.url, port, filepath.Join(filepath.Dir(h.config), "data"), c.smtp.Host, c.smtp.Port, c.inviterHS.URL, simName, c.sim.URL, c.storageYAML(), crashAdminToken, extra)
	if err := os.WriteFile(h.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

// reconfigure rewrites every replica's configuration with extra instead
// (they read it when next started).
func (c *cluster) reconfigure(t *testing.T, extra string) {
	t.Helper()
	for _, h := range c.replicas {
		u, _ := url.Parse(h.url)
		port, _ := strconv.Atoi(u.Port())
		c.writeConfig(t, h, port, extra)
	}
}

// query runs one SQL statement on the cluster's database and scans its
// one row into dest.
func (c *cluster) query(t *testing.T, sql string, dest ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if len(dest) == 0 {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return
	}
	if err := conn.QueryRow(ctx, sql).Scan(dest...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// waitLong is waitFor with a longer deadline, for work that waits on a
// lease or a sweep period.
func waitLong(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s", limit, what)
}

func (h *herald) register(t *testing.T, hs *hssim.Sim, mxid string) string {
	t.Helper()
	status, body := h.do(t, "POST", "/_matrix/identity/v2/account/register", map[string]any{
		"access_token": hs.AddUser(mxid), "token_type": "Bearer", "matrix_server_name": mxid[strings.Index(mxid, ":")+1:], "expires_in": 3600,
	}, "")
	var reg struct{ Token string }
	if err := json.Unmarshal(body, &reg); status != 200 || err != nil || reg.Token == "" {
		t.Fatalf("register %s: %d %s", mxid, status, body)
	}
	return reg.Token
}

// expiredLogged sums the counts of the expiry sweep's "invites expired"
// log lines in out.
func expiredLogged(out string) int {
	n := 0
	for _, m := range regexp.MustCompile(`invites expired.*?count[=":]+(\d+)`).FindAllStringSubmatch(out, -1) {
		c, _ := strconv.Atoi(m[1])
		n += c
	}
	return n
}

// TestReplicasShareOnePostgres runs two replicas of the built binary on one
// PostgreSQL database, each with its own data_dir. Store-invites from 16
// keep-alive clients are spread over both; one replica is killed with
// SIGKILL mid-load and its clients move to the other, whose answers keep
// succeeding. Then: every acknowledged invite is stored once with its
// token, every stored invite's mail went out (duplicates at most the mails
// leased at the kill), a key rotated on one replica signs on the other
// within seconds, binding every invited address delivers each onbind
// exactly once from either replica, and the expiry sweep expires each
// invite once across both.
func TestReplicasShareOnePostgres(t *testing.T) {
	c := newCluster(t, 2, "")
	a, b := c.replicas[0], c.replicas[1]
	a.start(t) // applies the migrations and makes the signing key
	b.start(t)
	atok := a.register(t, c.inviterHS, alice)

	const n = 160
	room := func(i int) string { return fmt.Sprintf("!rep%d:hs.test", i) }
	address := func(i int) string { return fmt.Sprintf("rep%d@example.org", i) }
	invite := func(h *herald, i int) (int, []byte, error) {
		raw, _ := json.Marshal(map[string]any{
			"medium": "email", "address": address(i), "room_id": room(i), "sender": alice,
			"room_name": "Replica room", "sender_display_name": "Alice",
		})
		req, _ := http.NewRequest("POST", h.url+"/_matrix/identity/v2/store-invite", strings.NewReader(string(raw)))
		req.Header.Set("Authorization", "Bearer "+atok)
		resp, err := h.client.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return resp.StatusCode, body, err
	}

	// 1. The load: 16 clients, half on each replica; b is killed once it
	// has acknowledged 30 invites, and its clients go on with a.
	var (
		mu                  sync.Mutex
		acked               = map[int]string{} // invite -> token, every 200
		answers             = map[int][]byte{}
		ackedBy             = [2]int{}
		cutOff              int
		afterKillOK         int
		killed              bool
		leasedAtKill        int
		killTime            time.Time
		next                = make(chan int, n)
		wg                  sync.WaitGroup
		fatal               []string
		killOnce            sync.Once
		killAt              = 30
		replicaOf           = func(w int) int { return w % 2 }
		currentReplicaOfJob = func(w int) (*herald, int) {
			mu.Lock()
			defer mu.Unlock()
			if replicaOf(w) == 1 && !killed {
				return b, 1
			}
			return a, 0
		}
	)
	for i := range n {
		next <- i
	}
	close(next)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				h, r := currentReplicaOfJob(w)
				status, body, err := invite(h, i)
				mu.Lock()
				switch {
				case err != nil && r == 1 && killed:
					cutOff++ // in flight to b at the kill: neither acknowledged nor refused
				case err != nil:
					fatal = append(fatal, fmt.Sprintf("store-invite %d on replica %d: %v", i, r, err))
				case status != 200:
					fatal = append(fatal, fmt.Sprintf("store-invite %d on replica %d: %d %s", i, r, status, body))
				default:
					var ans struct{ Token string }
					if err := json.Unmarshal(body, &ans); err != nil || ans.Token == "" {
						fatal = append(fatal, fmt.Sprintf("store-invite %d: %s", i, body))
						break
					}
					acked[i], answers[i] = ans.Token, body
					ackedBy[r]++
					if killed && r == 0 {
						afterKillOK++
					}
				}
				doKill := r == 1 && ackedBy[1] >= killAt && !killed
				if doKill {
					killed = true
				}
				mu.Unlock()
				if doKill {
					killOnce.Do(func() {
						// b dies holding whatever mails it had leased (its
						// leases outlive it); count every lease right after,
						// b's among them.
						b.kill(t)
						killTime = time.Now()
						c.query(t, `SELECT count(*) FROM queue_records WHERE queue = 'outbox' AND lease_until > now()`, &leasedAtKill)
					})
				}
			}
		}()
	}
	wg.Wait()
	if len(fatal) > 0 {
		t.Fatalf("%d requests failed, first: %s", len(fatal), fatal[0])
	}
	if !killed || afterKillOK == 0 {
		t.Fatalf("b killed %v; a answered %d store-invites after the kill", killed, afterKillOK)
	}
	t.Logf("acknowledged %d by a, %d by b before its kill; %d cut off; a answered %d after the kill; %d mails leased at the kill",
		ackedBy[0], ackedBy[1], cutOff, afterKillOK, leasedAtKill)

	// b comes back on its own data_dir (a replacement replica).
	b.start(t)

	// 2. Every acknowledged invite is stored once; a repeat (same sender,
	// room and address, still pending) answers its token, on either replica.
	var stored []int
	for i := range n {
		var list struct {
			Invites []json.RawMessage `json:"invites"`
		}
		c.replicas[i%2].admin(t, "/admin/api/invites?q="+url.QueryEscape(address(i)), &list)
		switch len(list.Invites) {
		case 0:
			if _, ok := acked[i]; ok {
				t.Fatalf("acknowledged invite %d is not in the store", i)
			}
		case 1:
			stored = append(stored, i)
		default:
			t.Fatalf("invite %d stored %d times", i, len(list.Invites))
		}
	}
	for _, i := range stored {
		h := c.replicas[i%2]
		status, body := h.do(t, "POST", "/_matrix/identity/v2/store-invite", map[string]any{
			"medium": "email", "address": address(i), "room_id": room(i), "sender": alice,
		}, atok)
		var ans struct{ Token string }
		_ = json.Unmarshal(body, &ans)
		if status != 200 || ans.Token == "" || acked[i] != "" && ans.Token != acked[i] {
			t.Fatalf("repeat of invite %d: %d %s, want token %q", i, status, body, acked[i])
		}
		answers[i] = body
		if _, err := c.sim.AddStoreInviteAnswer(room(i), alice, h.url, body); err != nil {
			t.Fatal(err)
		}
	}

	// 4. A key rotated on a (through its control socket) is served and used
	// by b within seconds.
	old := keyIDs(a.mustCLI(t, "", "keys", "list"))
	a.mustCLI(t, "", "keys", "rotate")
	ids := keyIDs(a.mustCLI(t, "", "keys", "list"))
	if len(ids) != len(old)+1 || ids[1] != old[0] {
		t.Fatalf("keys before rotate %v, after %v", old, ids)
	}
	newID := ids[0]
	var newPub string
	status, body := a.do(t, "GET", "/_matrix/identity/v2/pubkey/"+url.PathEscape(newID), nil, "")
	var pk struct {
		PublicKey string `json:"public_key"`
	}
	if err := json.Unmarshal(body, &pk); status != 200 || err != nil {
		t.Fatalf("new key on a: %d %s", status, body)
	}
	newPub = pk.PublicKey
	rotated := time.Now()
	waitFor(t, "b to sign store-invites with the new key", func() bool {
		status, body := b.do(t, "POST", "/_matrix/identity/v2/store-invite", map[string]any{
			"medium": "email", "address": fmt.Sprintf("rot%d@example.org", time.Now().UnixNano()), "room_id": "!rot:hs.test", "sender": alice,
		}, atok)
		var ans struct {
			PublicKeys []struct {
				PublicKey string `json:"public_key"`
			} `json:"public_keys"`
		}
		if err := json.Unmarshal(body, &ans); status != 200 || err != nil || len(ans.PublicKeys) == 0 {
			t.Fatalf("store-invite on b: %d %s", status, body)
		}
		return ans.PublicKeys[0].PublicKey == newPub
	})
	t.Logf("b used the key rotated on a after %s", time.Since(rotated).Round(time.Millisecond))
	status, body = b.do(t, "GET", "/_matrix/identity/v2/pubkey/"+url.PathEscape(newID), nil, "")
	if err := json.Unmarshal(body, &pk); status != 200 || err != nil || pk.PublicKey != newPub {
		t.Fatalf("new key on b: %d %s", status, body)
	}
	pub, err := keys.DecodeBase64(newPub)
	if err != nil {
		t.Fatal(err)
	}

	// 5. Every invited address is bound, half through each replica; each
	// invite's onbind reaches the homeserver exactly once. b's bind answers
	// are signed with the key rotated on a.
	jobs := make(chan int, len(stored))
	for _, i := range stored {
		jobs <- i
	}
	close(jobs)
	var bwg sync.WaitGroup
	var bindErrs []string
	for range 4 {
		bwg.Add(1)
		go func() {
			defer bwg.Done()
			for i := range jobs {
				if err := c.bindAddress(t, c.replicas[i%2], i, address(i), ed25519Check(newID, pub, i%2 == 1), ""); err != nil {
					mu.Lock()
					bindErrs = append(bindErrs, err.Error())
					mu.Unlock()
				}
			}
		}()
	}
	bwg.Wait()
	if len(bindErrs) > 0 {
		t.Fatalf("%d binds failed, first: %s", len(bindErrs), bindErrs[0])
	}
	waitLong(t, "every onbind to be delivered", 30*time.Second, func() bool {
		var pending int
		c.query(t, `SELECT count(*) FROM queue_records WHERE queue = 'onbind' AND state = 'pending'`, &pending)
		return pending == 0 && len(c.sim.Accepted()) >= len(stored)
	})
	perToken := map[string]int{}
	for _, acc := range c.sim.Accepted() {
		perToken[acc.Token]++
	}
	for _, i := range stored {
		var ans struct{ Token string }
		_ = json.Unmarshal(answers[i], &ans)
		if perToken[ans.Token] != 1 {
			t.Errorf("invite %d's onbind arrived %d times", i, perToken[ans.Token])
		}
	}
	if len(c.sim.Accepted()) != len(stored) {
		t.Errorf("the homeserver accepted %d invites, %d were bound", len(c.sim.Accepted()), len(stored))
	}

	// 6. Periodic jobs run once across both replicas: with a 1 s expiry,
	// 20 invites (half on each) expire; the sweep, made due now, expires
	// each once, on whichever replica holds its lock.
	a.stop(t)
	b.stop(t)
	c.reconfigure(t, "invites:\n  expiry: 1s\n")
	a.start(t)
	b.start(t)
	const k = 20
	for i := range k {
		h := c.replicas[i%2]
		status, body := h.do(t, "POST", "/_matrix/identity/v2/store-invite", map[string]any{
			"medium": "email", "address": fmt.Sprintf("exp%d@example.org", i), "room_id": "!exp:hs.test", "sender": alice,
		}, atok)
		if status != 200 {
			t.Fatalf("store-invite: %d %s", status, body)
		}
	}
	logsBefore := a.out.String() + b.out.String()
	waitLong(t, "the invites to be past their expiry", 5*time.Second, func() bool {
		var due int
		c.query(t, `SELECT count(*) FROM invites WHERE state = 'pending' AND expires_at < now() AND address LIKE 'exp%'`, &due)
		return due == k
	})
	c.query(t, `UPDATE periodic_jobs SET next_run = now() WHERE name = 'invite-expiry'`)
	waitLong(t, "the sweep to expire the invites", 30*time.Second, func() bool {
		var expired int
		c.query(t, `SELECT count(*) FROM invites WHERE state = 'expired' AND address LIKE 'exp%'`, &expired)
		return expired == k
	})
	// One run: next_run moved one period (a minute) past that run's start,
	// and one replica logged the k invites it expired.
	var started, nextRun time.Time
	var holder string
	c.query(t, `SELECT last_started, next_run, last_holder FROM periodic_jobs WHERE name = 'invite-expiry'`, &started, &nextRun, &holder)
	if d := nextRun.Sub(started); d != time.Minute {
		t.Errorf("invite-expiry: next_run %s after its last start, want one period", d)
	}
	if logged := expiredLogged(a.out.String()+b.out.String()) - expiredLogged(logsBefore); logged != k {
		t.Errorf("the replicas logged %d invites expired, want %d", logged, k)
	}
	if lines := strings.Count(a.out.String()+b.out.String(), "invites expired") - strings.Count(logsBefore, "invites expired"); lines != 1 {
		t.Errorf("%d expiry runs logged expiring invites, want 1", lines)
	}
	t.Logf("the expiry sweep ran on %s", holder)
	// 7. Every stored invite's mail went out: b's leased mails too, taken by
	// a's next claim once b's owner lock went with its connection (without
	// that, only when the lease ran out: the send timeout, 2 min, plus a
	// minute, which this bound still allows).
	waitLong(t, "the outbox to drain", 200*time.Second-time.Since(killTime), func() bool {
		var pending int
		c.query(t, `SELECT count(*) FROM queue_records WHERE queue = 'outbox' AND state = 'pending'`, &pending)
		return pending == 0
	})
	perAddress := map[string][]*mailer.Parsed{}
	for _, m := range c.smtp.Messages() {
		p, err := mailer.Parse(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(m.To[0], "rep") || strings.Contains(p.Subject, "Confirm") {
			continue // the validation mails of step 5, the invites of steps 4 and 6
		}
		perAddress[strings.ToLower(m.To[0])] = append(perAddress[strings.ToLower(m.To[0])], p)
	}
	duplicates := 0
	for _, i := range stored {
		mails := perAddress[address(i)]
		if len(mails) == 0 {
			t.Fatalf("invite %d (acknowledged: %v) got no email", i, acked[i] != "")
		}
		duplicates += len(mails) - 1
		tok := acked[i]
		if tok != "" && !strings.Contains(mails[0].Text, tok) && !strings.Contains(mails[0].Text, url.QueryEscape(tok)) {
			t.Errorf("invite %d's email does not carry its token", i)
		}
	}
	if len(perAddress) != len(stored) {
		t.Errorf("%d invites stored, mails went to %d addresses", len(stored), len(perAddress))
	}
	if duplicates > leasedAtKill {
		t.Errorf("%d duplicate emails, more than the %d leased when b was killed", duplicates, leasedAtKill)
	}
	t.Logf("%d invites stored (%d acknowledged), %d emails, %d duplicates", len(stored), len(acked), len(c.smtp.Messages()), duplicates)

	a.stop(t)
	b.stop(t)
	for i, h := range c.replicas {
		if strings.Contains(h.out.String(), "@example.org") {
			t.Errorf("replica %d logged an email address in clear", i)
		}
	}
}

// ed25519Check is a bind-answer check: when on, the answer must carry a
// signature by keyID that verifies with pub.
func ed25519Check(keyID string, pub []byte, on bool) func([]byte) error {
	return func(body []byte) error {
		if !on {
			return nil
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(body, &obj); err != nil {
			return err
		}
		return keys.VerifyJSON(obj, "herald.test", keyID, pub)
	}
}

// bindAddress registers mxid (default @inv<i>:sim.test) at h, validates
// address with the mail h sends and binds it; check looks at the bind
// answer.
func (c *cluster) bindAddress(t *testing.T, h *herald, i int, address string, check func([]byte) error, mxid string) error {
	if mxid == "" {
		mxid = fmt.Sprintf("@inv%d:%s", i, simName)
	}
	tok := h.register(t, c.sim, mxid)
	secret := fmt.Sprintf("secret%d", i)
	status, body := h.do(t, "POST", reqTokenPath, map[string]any{"client_secret": secret, "email": address, "send_attempt": 1}, tok)
	if status != 200 {
		return fmt.Errorf("requestToken %d: %d %s", i, status, body)
	}
	sid, _, token := tokenFromMail(t, waitMail(t, c.smtp, address, "Confirm", 0))
	status, body = h.do(t, "POST", submitPath, map[string]any{"sid": sid, "client_secret": secret, "token": token}, tok)
	if status != 200 {
		return fmt.Errorf("submitToken %d: %d %s", i, status, body)
	}
	status, body = h.do(t, "POST", "/_matrix/identity/v2/3pid/bind", map[string]any{"sid": sid, "client_secret": secret, "mxid": mxid}, tok)
	if status != 200 {
		return fmt.Errorf("bind %d: %d %s", i, status, body)
	}
	if err := check(body); err != nil {
		return fmt.Errorf("bind %d answer: %v", i, err)
	}
	return nil
}
