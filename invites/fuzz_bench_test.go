package invites_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/loadgen"
)

// FuzzStoreInvite: whatever the body, store-invite answers below 500 with a
// well-formed answer (spec-validated by testenv): a token, or a Matrix error.
func FuzzStoreInvite(f *testing.F) {
	e := start(f, func(c *config.Config) { c.Compat.V1 = true })
	tok := e.register(f, alice)
	for _, b := range []map[string]any{
		inviteBody(alice, "fuzz@example.org"),
		{"medium": "email", "address": "x@example.org", "room_id": "!r:hs.test", "sender": alice, "extra": []int{1}},
		{"medium": "msisdn", "address": "123", "room_id": "!r:hs.test", "sender": alice},
		{"medium": "email", "address": "Ünï@Exämple.org", "room_id": "!r:hs.test", "sender": alice, "room_name": nil},
	} {
		raw, _ := json.Marshal(b)
		f.Add(raw, false)
		f.Add(raw, true)
	}
	for _, s := range []string{"", "{}", "[]", "null", `{"medium":1}`, `{"address":{"a":1}}`, "\x00", `{"medium":"email"`,
		"medium=email&address=a%40b.org&room_id=%21r%3Ahs.test&sender=%40a%3Ahs.test", `{"sender":"@alice:hs.test","medium":"email","address":"a@b.c","room_id":"!\u0000"}`} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, body []byte, v1 bool) {
		path, token := "/_matrix/identity/v2/store-invite", tok
		if v1 {
			path, token = "/_matrix/identity/api/v1/store-invite", ""
		}
		status, raw := e.Do(t, http.MethodPost, path, body, token)
		checkAnswer(t, status, raw)
		if status == 200 {
			var a storeAnswer
			wantKeys := 2 // v1 (Dendrite) answers list the long-term key only
			if v1 {
				wantKeys = 1
			}
			if json.Unmarshal(raw, &a) != nil || !tokenRE.MatchString(a.Token) || len(a.PublicKeys) != wantKeys || a.DisplayName == "" {
				t.Errorf("malformed 200: %s", raw)
			}
		}
	})
}

// FuzzSignEd25519 covers the unauthenticated link form.
func FuzzSignEd25519(f *testing.F) {
	e := start(f)
	tok := e.register(f, alice)
	a := e.storeInvite(f, tok, inviteBody(alice, "sign@example.org"))
	inv, _ := e.App.Invites().ByToken(a.Token)
	f.Add("token="+url.QueryEscape(a.Token)+"&private_key="+url.QueryEscape(inv.EphemeralPrivate)+"&mxid=%40x%3Ahs.test", "")
	f.Add("token="+a.Token, `{"mxid":"@x:hs.test","token":"`+a.Token+`","private_key":"`+inv.EphemeralPrivate+`"}`)
	f.Add("", "{}")
	f.Add("%zz", "[")
	f.Fuzz(func(t *testing.T, query, body string) {
		var b any
		if body != "" {
			b = body
		}
		status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/api/v1/sign-ed25519?"+requestSafe(query), b, "")
		checkAnswer(t, status, raw)
	})
}

// requestSafe percent-encodes what cannot appear raw in a request line
// (net/http itself, not Herald, would answer those).
func requestSafe(q string) string {
	var b strings.Builder
	for i := 0; i < len(q); i++ {
		if c := q[i]; c <= ' ' || c >= 0x7f || c == '#' {
			fmt.Fprintf(&b, "%%%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

func checkAnswer(t *testing.T, status int, raw []byte) {
	t.Helper()
	if status >= 500 {
		t.Fatalf("status %d: %s", status, raw)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("answer is not a JSON object: %q", raw)
	}
	if status != 200 {
		if code, _ := m["errcode"].(string); !strings.HasPrefix(code, "M_") {
			t.Fatalf("error without errcode: %d %s", status, raw)
		}
	}
}

// ---- benchmarks (go test -bench . ./invites) ----
//
// They go through the whole HTTP stack (TCP on 127.0.0.1, Echo and its
// middleware, authentication, bbolt with fsync on commit) from a client in
// the same process: internal/loadgen, one keep-alive connection per
// goroutine with requests prepared once, so the CPU measured is Herald's
// more than the client's. No spec validation in the loop.

// benchParallelism: goroutines per GOMAXPROCS sending store-invites, enough
// for the group-commit writer to put many store-invites in one commit
// (store.Committer).
const benchParallelism = 32

// BenchmarkStoreInvite: durable store-invite (invite, ephemeral key and
// outgoing mail in one bbolt transaction, grouped by store.Committer).
//
//   - mail=delivered: the mail worker sends to an in-process SMTP server
//     meanwhile, and the clock stops when the SMTP server has accepted every
//     invite's mail: the sustained rate of invites whose email went out.
//   - mail=held: acknowledged durable store-invites alone; the SMTP server
//     accepts connections and never answers, so the worker sits waiting on
//     its first greeting and spends nothing.
func BenchmarkStoreInvite(b *testing.B) {
	b.Run("mail=delivered", func(b *testing.B) { benchStoreInvite(b, true) })
	b.Run("mail=held", func(b *testing.B) { benchStoreInvite(b, false) })
}

func benchStoreInvite(b *testing.B, deliver bool) {
	var e *env
	if deliver {
		e = start(b)
	} else {
		stall := stalledSMTP(b)
		e = start(b, func(c *config.Config) {
			c.SMTP.Host, c.SMTP.Port, c.SMTP.Timeout = stall.Host, stall.Port, config.Duration(time.Minute)
		})
		b.Cleanup(stall.Close) // before testenv's cleanup: let the worker go
	}
	tok := e.register(b, alice)
	raw, _ := json.Marshal(inviteBody(alice, "benchADDR@example.org"))
	pre, post, _ := bytes.Cut(raw, []byte("ADDR"))
	req := loadgen.NewRequest(e.URL, "POST", "/_matrix/identity/v2/store-invite", nil,
		"Content-Type", "application/json", "Authorization", "Bearer "+tok)
	var n atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(benchParallelism)
	b.ResetTimer()
	cpu0 := cpuNow()
	b.RunParallel(func(pb *testing.PB) {
		c := dial(b, e.URL)
		defer c.Close()
		var body []byte
		for pb.Next() {
			body = append(strconv.AppendInt(append(body[:0], pre...), n.Add(1), 10), post...)
			if st, ans, err := c.Do(req.WithBody(body)); err != nil || st != 200 {
				b.Errorf("store-invite: %d %s %v", st, ans, err)
				return
			}
		}
	})
	if deliver {
		// Poll (smtptest's WaitFor copies every message on every arrival).
		for deadline := time.Now().Add(5 * time.Minute); len(e.SMTP.Messages()) < b.N; time.Sleep(2 * time.Millisecond) {
			if time.Now().After(deadline) {
				b.Fatalf("SMTP server got %d mails, want %d", len(e.SMTP.Messages()), b.N)
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(float64((cpuNow()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "invites/s")
}

func dial(b *testing.B, u string) *loadgen.Conn {
	c, err := loadgen.Dial(u)
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// stalledSMTP accepts connections and never says a word; Close closes the
// listener and every connection.
type stalledServer struct {
	Host string
	Port int
	ln   net.Listener
	mu   sync.Mutex
	cs   []net.Conn
}

func stalledSMTP(b *testing.B) *stalledServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	s := &stalledServer{Host: "127.0.0.1", Port: ln.Addr().(*net.TCPAddr).Port, ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.cs = append(s.cs, c)
			s.mu.Unlock()
		}
	}()
	return s
}

func (s *stalledServer) Close() {
	s.ln.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.cs {
		c.Close()
	}
}

func benchGet(b *testing.B, u, path string) {
	req := loadgen.NewRequest(u, "GET", path, nil)
	b.ReportAllocs()
	b.SetParallelism(8)
	b.ResetTimer()
	cpu0 := cpuNow()
	b.RunParallel(func(pb *testing.PB) {
		c := dial(b, u)
		defer c.Close()
		for pb.Next() {
			if st, body, err := c.Do(req); err != nil || st != 200 || !bytes.Contains(body, []byte(`"valid":true`)) {
				b.Errorf("%s: %d %s %v", path, st, body, err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64((cpuNow()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "checks/s")
}

// BenchmarkIsValid: GET /v2/pubkey/isvalid (the long-term key, in memory).
func BenchmarkIsValid(b *testing.B) {
	e := start(b)
	benchGet(b, e.URL, "/_matrix/identity/v2/pubkey/isvalid?public_key="+url.QueryEscape(e.App.Ring().Current().PublicBase64()))
}

// BenchmarkEphemeralIsValid: GET /v2/pubkey/ephemeral/isvalid (one bbolt
// read in a read-only transaction; no disk write).
func BenchmarkEphemeralIsValid(b *testing.B) {
	e := start(b)
	tok := e.register(b, alice)
	a := e.storeInvite(b, tok, inviteBody(alice, "eph@example.org"))
	benchGet(b, e.URL, "/_matrix/identity/v2/pubkey/ephemeral/isvalid?public_key="+url.QueryEscape(a.PublicKeys[1].PublicKey))
}

// cpuNow is the process's user+system CPU time. Benchmarks report CPU per
// operation (client, server and workers together) because wall-clock rates
// on a shared machine say more about the neighbours than about Herald.
func cpuNow() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
