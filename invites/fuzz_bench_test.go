package invites_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
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
			if json.Unmarshal(raw, &a) != nil || !tokenRE.MatchString(a.Token) || len(a.PublicKeys) != 2 || a.DisplayName == "" {
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

// post sends a JSON request straight through the HTTP stack (no spec
// validation, which would dominate the timings).
func post(b *testing.B, client *http.Client, u, tok string, body []byte) int {
	req, _ := http.NewRequest(http.MethodPost, u, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := client.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

var benchParallelism = 32

func benchClient() *http.Client {
	return &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
}

// BenchmarkStoreInvite: durable store-invite (invite, ephemeral key and
// outgoing mail in one bbolt transaction, grouped by Batch), with the mail
// worker sending to an in-process SMTP server meanwhile.
func BenchmarkStoreInvite(b *testing.B) {
	e := start(b)
	tok := e.register(b, alice)
	client := benchClient()
	var n atomic.Int64
	u := e.URL + "/_matrix/identity/v2/store-invite"
	b.ReportAllocs()
	b.SetParallelism(benchParallelism)
	b.ResetTimer()
	cpu0 := cpuNow()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			body, _ := json.Marshal(inviteBody(alice, fmt.Sprintf("bench%d@example.org", n.Add(1))))
			if st := post(b, client, u, tok, body); st != 200 {
				b.Errorf("status %d", st)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64((cpuNow()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "invites/s")
}

func benchGet(b *testing.B, u string) {
	client := benchClient()
	b.ReportAllocs()
	b.SetParallelism(8)
	b.ResetTimer()
	cpu0 := cpuNow()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Get(u)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64((cpuNow()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "checks/s")
}

func BenchmarkIsValid(b *testing.B) {
	e := start(b)
	benchGet(b, e.URL+"/_matrix/identity/v2/pubkey/isvalid?public_key="+url.QueryEscape(e.App.Ring().Current().PublicBase64()))
}

func BenchmarkEphemeralIsValid(b *testing.B) {
	e := start(b)
	tok := e.register(b, alice)
	a := e.storeInvite(b, tok, inviteBody(alice, "eph@example.org"))
	benchGet(b, e.URL+"/_matrix/identity/v2/pubkey/ephemeral/isvalid?public_key="+url.QueryEscape(a.PublicKeys[1].PublicKey))
}

// cpuNow is the process's user+system CPU time. Benchmarks report CPU per
// operation (client, server and workers together) because wall-clock rates
// on a shared machine say more about the neighbours than about Herald.
func cpuNow() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
