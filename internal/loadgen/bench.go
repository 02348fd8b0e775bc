package loadgen

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/mail"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// BoundAddress is the address of the i-th binding `herald bench populate`
// makes: lookups ask for these.
func BoundAddress(i int) string { return fmt.Sprintf("bound%09d@populate.test", i) }

// BenchHomeserver is the server name of the benchmark's homeserver.
const BenchHomeserver = "bench.test"

// BenchOptions configure RunBench (herald bench run).
type BenchOptions struct {
	URL string // Herald's base URL
	// URLs, when it holds more than one, are the base URLs of several
	// replicas serving one database: the connections of each load step are
	// spread over them in turn (connection i to URLs[i % len(URLs)]), and
	// everything else (registering, the cycles) goes to URL, the first.
	URLs        []string
	HSListen    string        // where the benchmark homeserver listens
	SMTPListen  string        // where the benchmark SMTP server listens
	Duration    time.Duration // each load step
	Concurrency []int         // store-invite connections per step
	// Rate, when above 0, paces each store-invite step at that many
	// requests per second over all its connections (an open load: a
	// request's latency counts from when it was due, so a server that
	// falls behind shows it); 0 sends as fast as the connections go.
	Rate     float64
	Cycles   int      // invite -> bind -> onbind cycles
	Bindings int      // bindings populate made
	Steps    []string // store, cycle, lookup, isvalid
	// MetricsURL, when set, is Herald's /metrics (metrics.listen): each
	// step then also prints the server's CPU time per request, read from
	// process_cpu_seconds_total, a figure that depends much less than the
	// rate on what else the machine runs.
	MetricsURL string
	Out        io.Writer
	// HSListener and SMTPListener, when set, are used instead of
	// listening on HSListen and SMTPListen (tests).
	HSListener, SMTPListener net.Listener
}

// BenchConfig is the configuration Herald needs for RunBench: its SMTP
// server and homeserver, and no rate limits in the way of the load.
func BenchConfig(o BenchOptions) string {
	sh, sp, _ := net.SplitHostPort(o.SMTPListen)
	return fmt.Sprintf(`# Herald under herald bench run: mail goes to the benchmark's SMTP server,
# the homeserver %s is the benchmark's, and nothing limits the load.
smtp:
  host: %s
  port: %s
  security: none
  # Mail is sent over this many connections at once (default 16): at
  # thousands of invites a second, each mail's round trips to the SMTP server
  # on the same busy cores leave 16 behind. Set it to what your relay accepts.
  connections: 32
federation:
  servers:
    %s: http://%s
  allow_private_addresses: true
invites:
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
`, BenchHomeserver, sh, sp, BenchHomeserver, o.HSListen)
}

// bench is one run: its homeserver and SMTP server and what they saw.
type bench struct {
	o     BenchOptions
	token string // Herald access token of @bench:bench.test

	mu      sync.Mutex
	mails   map[string]time.Time // recipient -> when the SMTP server accepted its last mail
	codes   map[string]string    // recipient -> validation token in its last mail
	waiters map[string]chan struct{}
	onbinds map[string]time.Time // address -> when its onbind arrived
}

func (b *bench) printf(format string, args ...any) { fmt.Fprintf(b.o.Out, format, args...) }

// RunBench runs the steps of o against a running Herald.
func RunBench(ctx context.Context, o BenchOptions) error {
	b := &bench{o: o, mails: map[string]time.Time{}, codes: map[string]string{}, waiters: map[string]chan struct{}{}, onbinds: map[string]time.Time{}}
	stop, err := b.serve()
	if err != nil {
		return err
	}
	defer stop()
	if b.token, err = b.register(); err != nil {
		return fmt.Errorf("register at Herald (is it configured as `herald bench run --print-config` says?): %w", err)
	}
	b.printf("herald bench run: %s, %s per step, load average %s\n", strings.Join(b.urls(), ","), o.Duration, loadAvg())
	for _, step := range o.Steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		var err error
		switch step {
		case "store":
			err = b.storeSteps(ctx)
		case "cycle":
			err = b.cycles(ctx)
		case "lookup":
			err = b.lookups(ctx)
		case "isvalid":
			err = b.isValid(ctx)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", step, err)
		}
	}
	return nil
}

// loadAvg is the first field of /proc/loadavg ("?" elsewhere).
func loadAvg() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(raw))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// serve starts the homeserver and the SMTP server.
func (b *bench) serve() (stop func(), _ error) {
	hl, sl := b.o.HSListener, b.o.SMTPListener
	var err error
	if hl == nil {
		if hl, err = net.Listen("tcp", b.o.HSListen); err != nil {
			return nil, fmt.Errorf("--hs-listen: %w", err)
		}
	}
	hs := &http.Server{Handler: http.HandlerFunc(b.homeserver), ErrorLog: log.New(io.Discard, "", 0)}
	go hs.Serve(hl)
	if sl == nil {
		if sl, err = net.Listen("tcp", b.o.SMTPListen); err != nil {
			hs.Close()
			return nil, fmt.Errorf("--smtp-listen: %w", err)
		}
	}
	ss := &smtpSink{deliver: b.received}
	go ss.serve(sl)
	return func() { hs.Close(); ss.close() }, nil
}

// homeserver answers OpenID userinfo (every token is @bench:bench.test) and
// records onbind calls.
func (b *bench) homeserver(w http.ResponseWriter, r *http.Request) {
	switch {
	case strings.HasSuffix(r.URL.Path, "/openid/userinfo"):
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"sub":"@bench:%s"}`, BenchHomeserver)
	case strings.HasSuffix(r.URL.Path, "/3pid/onbind"):
		var body struct {
			Address string `json:"address"`
		}
		raw, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(raw, &body)
		now := time.Now()
		b.mu.Lock()
		b.onbinds[strings.ToLower(body.Address)] = now
		if ch := b.waiters["onbind:"+strings.ToLower(body.Address)]; ch != nil {
			close(ch)
			delete(b.waiters, "onbind:"+strings.ToLower(body.Address))
		}
		b.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte("{}"))
	default:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(404)
		w.Write([]byte(`{"errcode":"M_UNRECOGNIZED","error":"not in the benchmark homeserver"}`))
	}
}

var codeLine = regexp.MustCompile(`(?m)^\s*([A-Za-z0-9_\-]{6,})\s*$`)

// received records a message the SMTP sink accepted: when it arrived for
// each recipient, and the code of a validation mail.
func (b *bench) received(to []string, raw []byte) {
	now := time.Now()
	code := ""
	if bytes.Contains(raw, []byte("submitToken")) {
		code = validationCode(raw) // a validation mail
	}
	b.mu.Lock()
	for _, to := range to {
		b.mails[to] = now
		if code != "" {
			b.codes[to] = code
		}
		if ch := b.waiters["mail:"+to]; ch != nil && code != "" {
			close(ch)
			delete(b.waiters, "mail:"+to)
		}
	}
	b.mu.Unlock()
}

// validationCode finds the code in a validation mail's text part: the
// token= of the link, or a line holding only the code.
func validationCode(raw []byte) string {
	text := mailText(raw)
	if i := strings.Index(text, "token="); i >= 0 {
		rest := text[i+len("token="):]
		if j := strings.IndexAny(rest, "&\r\n \"'<"); j >= 0 {
			rest = rest[:j]
		}
		if v, err := url.QueryUnescape(rest); err == nil && v != "" {
			return v
		}
	}
	if m := codeLine.FindStringSubmatch(text); m != nil {
		return m[1]
	}
	return ""
}

// mailText is the text/plain part of a message (decoded), or its body.
func mailText(raw []byte) string {
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return string(raw)
	}
	mt, params, _ := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if strings.HasPrefix(mt, "multipart/") {
		mr := multipart.NewReader(msg.Body, params["boundary"])
		for {
			p, err := mr.NextPart()
			if err != nil {
				break
			}
			if strings.HasPrefix(p.Header.Get("Content-Type"), "text/plain") {
				body, _ := io.ReadAll(p) // multipart decodes quoted-printable
				return string(body)
			}
		}
	}
	body, _ := io.ReadAll(msg.Body)
	return string(body)
}

// wait returns a channel closed when key ("mail:ADDR" with a code, or
// "onbind:ADDR") has happened.
func (b *bench) wait(key string) <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	addr := strings.SplitN(key, ":", 2)[1]
	ch := make(chan struct{})
	switch {
	case strings.HasPrefix(key, "mail:") && b.codes[addr] != "":
		close(ch)
	case strings.HasPrefix(key, "onbind:") && !b.onbinds[addr].IsZero():
		close(ch)
	default:
		b.waiters[key] = ch
	}
	return ch
}

// call sends one JSON request on c and decodes a 200 answer into out.
func (b *bench) call(c *Conn, method, path string, body any, out any) error {
	var raw []byte
	if body != nil {
		raw, _ = json.Marshal(body)
	}
	hdr := []string{"Content-Type", "application/json"}
	if b.token != "" {
		hdr = append(hdr, "Authorization", "Bearer "+b.token)
	}
	status, ans, err := c.Do(NewRequest(b.o.URL, method, path, raw, hdr...))
	if err != nil {
		return err
	}
	if status != 200 {
		return fmt.Errorf("%s %s: %d %s", method, path, status, ans)
	}
	if out != nil {
		return json.Unmarshal(ans, out)
	}
	return nil
}

func (b *bench) register() (string, error) {
	c, err := Dial(b.o.URL)
	if err != nil {
		return "", err
	}
	defer c.Close()
	var reg struct {
		Token string `json:"token"`
	}
	if err := b.call(c, "POST", "/_matrix/identity/v2/account/register", map[string]any{
		"access_token": "bench", "token_type": "Bearer", "matrix_server_name": BenchHomeserver, "expires_in": 3600,
	}, &reg); err != nil {
		return "", err
	}
	b.token = reg.Token
	// Accept whatever terms the server has.
	var terms struct {
		Policies map[string]map[string]any `json:"policies"`
	}
	if err := b.call(c, "GET", "/_matrix/identity/v2/terms", nil, &terms); err != nil {
		return "", err
	}
	var urls []string
	for _, p := range terms.Policies {
		for k, v := range p {
			if m, ok := v.(map[string]any); ok && k != "version" {
				if u, ok := m["url"].(string); ok {
					urls = append(urls, u)
				}
			}
		}
	}
	if len(urls) > 0 {
		if err := b.call(c, "POST", "/_matrix/identity/v2/terms", map[string]any{"user_accepts": urls}, nil); err != nil {
			return "", err
		}
	}
	return reg.Token, nil
}

// Figures of one step.
type figures struct {
	ok, failed int
	elapsed    time.Duration
	lat        []time.Duration
	firstErr   error
	serverCPU  time.Duration // -1: not known
}

func (f *figures) String() string {
	slices.Sort(f.lat)
	pct := func(p float64) time.Duration {
		if len(f.lat) == 0 {
			return 0
		}
		return f.lat[min(len(f.lat)-1, int(float64(len(f.lat))*p))]
	}
	s := fmt.Sprintf("%8.0f/s  p50 %-9s p99 %-9s (%d in %s", float64(f.ok)/f.elapsed.Seconds(),
		pct(0.50).Round(10*time.Microsecond), pct(0.99).Round(10*time.Microsecond), f.ok, f.elapsed.Round(time.Millisecond))
	if f.failed > 0 {
		s += fmt.Sprintf(", %d failed: %v", f.failed, f.firstErr)
	}
	s += ")"
	if f.serverCPU >= 0 && f.ok+f.failed > 0 {
		s += fmt.Sprintf("  server cpu %.0fµs/req", float64(f.serverCPU.Microseconds())/float64(f.ok+f.failed))
	}
	return s
}

// serverCPU reads process_cpu_seconds_total from Herald's /metrics (-1
// without MetricsURL or when it cannot be read).
func (b *bench) serverCPU() time.Duration {
	if b.o.MetricsURL == "" {
		return -1
	}
	cl := http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get(b.o.MetricsURL)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return -1
	}
	return parseCPUSeconds(raw)
}

// parseCPUSeconds finds process_cpu_seconds_total in a Prometheus text
// exposition (-1 if absent).
func parseCPUSeconds(raw []byte) time.Duration {
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "process_cpu_seconds_total "); ok {
			if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
				return time.Duration(f * float64(time.Second))
			}
		}
	}
	return -1
}

// urls are the base URLs load steps spread their connections over.
func (b *bench) urls() []string {
	if len(b.o.URLs) > 0 {
		return b.o.URLs
	}
	return []string{b.o.URL}
}

// load runs op on conns keep-alive connections for the step's duration,
// connection i to the i-th of urls() in turn. Herald does not look at the
// Host header, so a request prepared with the first URL serves them all.
func (b *bench) load(ctx context.Context, conns int, op func(c *Conn, seq int) error) (*figures, error) {
	f := &figures{serverCPU: -1}
	cpu0 := b.serverCPU()
	defer func() {
		if cpu1 := b.serverCPU(); cpu0 >= 0 && cpu1 >= 0 {
			f.serverCPU = cpu1 - cpu0
		}
	}()
	var mu sync.Mutex
	var seq atomic.Int64
	ctx, cancel := context.WithTimeout(ctx, b.o.Duration)
	defer cancel()
	var wg sync.WaitGroup
	start := time.Now()
	urls := b.urls()
	var due <-chan time.Time
	if b.o.Rate > 0 && conns > 1 {
		due = pace(ctx, start, b.o.Rate)
	}
	for i := 0; i < conns; i++ {
		c, err := Dial(urls[i%len(urls)])
		if err != nil {
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			var lat []time.Duration
			ok, failed := 0, 0
			var firstErr error
			for ctx.Err() == nil {
				t := time.Now()
				if due != nil {
					var ok bool
					if t, ok = <-due; !ok {
						break
					}
				}
				err := op(c, int(seq.Add(1)))
				if err != nil {
					failed++
					if firstErr == nil {
						firstErr = err
					}
					continue
				}
				lat = append(lat, time.Since(t))
				ok++
			}
			mu.Lock()
			f.ok += ok
			f.failed += failed
			f.lat = append(f.lat, lat...)
			if f.firstErr == nil {
				f.firstErr = firstErr
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	f.elapsed = time.Since(start)
	return f, nil
}

// pace returns a channel that yields the times at which requests are due,
// rate per second from start, until ctx ends. Times that came due while no
// connection was free are still handed out, late, so the latency measured
// from them includes the wait.
func pace(ctx context.Context, start time.Time, rate float64) <-chan time.Time {
	due := make(chan time.Time)
	go func() {
		defer close(due)
		every := time.Duration(float64(time.Second) / rate)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			at := start.Add(time.Duration(i) * every)
			for time.Now().Before(at) {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
			select {
			case <-ctx.Done():
				return
			case due <- at:
			}
		}
	}()
	return due
}

// run is a per-run prefix so repeated runs invite fresh addresses.
var run = fmt.Sprintf("%x", rand.Uint32())

func (b *bench) storeInvite(c *Conn, address string) (pub, eph string, err error) {
	var ans struct {
		PublicKeys []struct {
			PublicKey      string `json:"public_key"`
			KeyValidityURL string `json:"key_validity_url"`
		} `json:"public_keys"`
	}
	err = b.call(c, "POST", "/_matrix/identity/v2/store-invite", map[string]any{
		"medium": "email", "address": address, "room_id": "!bench:" + BenchHomeserver,
		"sender": "@bench:" + BenchHomeserver, "room_name": "Benchmark", "sender_display_name": "Bench",
	}, &ans)
	for _, k := range ans.PublicKeys {
		if strings.Contains(k.KeyValidityURL, "ephemeral") {
			eph = k.PublicKey
		} else {
			pub = k.PublicKey
		}
	}
	return pub, eph, err
}

func (b *bench) storeSteps(ctx context.Context) error {
	for _, n := range b.o.Concurrency {
		var mu sync.Mutex
		sent := map[string]time.Time{}
		f, err := b.load(ctx, n, func(c *Conn, seq int) error {
			addr := fmt.Sprintf("si-%s-%d-%d@bench.test", run, n, seq)
			t := time.Now()
			_, _, err := b.storeInvite(c, addr)
			if err == nil {
				mu.Lock()
				sent[addr] = t
				mu.Unlock()
			}
			return err
		})
		if err != nil {
			return err
		}
		offered := ""
		if b.o.Rate > 0 && n > 1 {
			offered = fmt.Sprintf(" at %.0f/s", b.o.Rate)
		}
		b.printf("store-invite       %3d conn%s %s  load %s\n", n, offered, f, loadAvg())
		// How soon after its invite each mail reached SMTP: wait up to 30 s
		// for the last ones.
		// Each look goes over the mails still awaited only: hundreds of
		// thousands of addresses every 100 ms took a core from the Herald
		// still sending them.
		deadline := time.Now().Add(30 * time.Second)
		lags := make([]time.Duration, 0, len(sent))
		waiting := make([]string, 0, len(sent))
		for a := range sent {
			waiting = append(waiting, a)
		}
		for {
			b.mu.Lock()
			left := waiting[:0]
			for _, a := range waiting {
				if at, ok := b.mails[a]; ok {
					lags = append(lags, at.Sub(sent[a]))
				} else {
					left = append(left, a)
				}
			}
			b.mu.Unlock()
			waiting = left
			if len(waiting) == 0 || time.Now().After(deadline) || ctx.Err() != nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		missing := len(waiting)
		slices.Sort(lags)
		if len(lags) > 0 {
			within := 0
			for _, l := range lags {
				if l <= 5*time.Second {
					within++
				}
			}
			b.printf("  mail accepted by SMTP: p50 %s p99 %s max %s after its invite; %d of %d within 5 s, %d not after 30 s\n",
				lags[len(lags)/2].Round(time.Millisecond), lags[min(len(lags)-1, len(lags)*99/100)].Round(time.Millisecond),
				lags[len(lags)-1].Round(time.Millisecond), within, len(sent), missing)
		}
	}
	return nil
}

// cycles runs invite -> requestToken -> (mail) -> submitToken -> bind ->
// (onbind at the homeserver), one at a time, and times the whole.
func (b *bench) cycles(ctx context.Context) error {
	c, err := Dial(b.o.URL)
	if err != nil {
		return err
	}
	defer c.Close()
	f := &figures{serverCPU: -1} // several requests per cycle: no per-request CPU
	start := time.Now()
	for i := 0; i < b.o.Cycles && ctx.Err() == nil; i++ {
		addr := fmt.Sprintf("cy-%s-%d@bench.test", run, i)
		t := time.Now()
		err := b.cycle(ctx, c, addr, i)
		if err != nil {
			f.failed++
			if f.firstErr == nil {
				f.firstErr = err
			}
			continue
		}
		f.lat = append(f.lat, time.Since(t))
		f.ok++
	}
	f.elapsed = time.Since(start)
	b.printf("invite->bind->onbind 1 conn %s  load %s\n", f, loadAvg())
	return nil
}

func (b *bench) cycle(ctx context.Context, c *Conn, addr string, i int) error {
	if _, _, err := b.storeInvite(c, addr); err != nil {
		return err
	}
	secret := fmt.Sprintf("secret%s%d", run, i)
	var sess struct {
		SID string `json:"sid"`
	}
	mailed := b.wait("mail:" + addr)
	if err := b.call(c, "POST", "/_matrix/identity/v2/validate/email/requestToken", map[string]any{
		"email": addr, "client_secret": secret, "send_attempt": 1,
	}, &sess); err != nil {
		return err
	}
	if err := within(ctx, mailed, "the validation mail"); err != nil {
		return err
	}
	b.mu.Lock()
	code := b.codes[addr]
	b.mu.Unlock()
	if err := b.call(c, "POST", "/_matrix/identity/v2/validate/email/submitToken", map[string]any{
		"sid": sess.SID, "client_secret": secret, "token": code,
	}, nil); err != nil {
		return err
	}
	bound := b.wait("onbind:" + addr)
	if err := b.call(c, "POST", "/_matrix/identity/v2/3pid/bind", map[string]any{
		"sid": sess.SID, "client_secret": secret, "mxid": "@bench:" + BenchHomeserver, // the account's own user
	}, nil); err != nil {
		return err
	}
	return within(ctx, bound, "the onbind call")
}

func within(ctx context.Context, ch <-chan struct{}, what string) error {
	t := time.NewTimer(30 * time.Second)
	defer t.Stop()
	select {
	case <-ch:
		return nil
	case <-t.C:
		return errors.New(what + " did not come within 30 s")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// lookups sends 1,000-hash lookups: half of the addresses bound by populate
// (spread over all of them), half not.
func (b *bench) lookups(ctx context.Context) error {
	c, err := Dial(b.o.URL)
	if err != nil {
		return err
	}
	var hd struct {
		Pepper string `json:"lookup_pepper"`
	}
	err = b.call(c, "GET", "/_matrix/identity/v2/hash_details", nil, &hd)
	c.Close()
	if err != nil {
		return err
	}
	const bodies = 64
	var reqs []*Request
	for r := 0; r < bodies; r++ {
		var hashes []string
		for i := 0; i < 1000; i++ {
			addr := fmt.Sprintf("unbound%d-%d@populate.test", r, i)
			if i%2 == 0 && b.o.Bindings > 0 {
				addr = BoundAddress(rand.IntN(b.o.Bindings))
			}
			h := sha256.Sum256([]byte(addr + " email " + hd.Pepper))
			hashes = append(hashes, base64.RawURLEncoding.EncodeToString(h[:]))
		}
		raw, _ := json.Marshal(map[string]any{"algorithm": "sha256", "pepper": hd.Pepper, "addresses": hashes})
		reqs = append(reqs, NewRequest(b.o.URL, "POST", "/_matrix/identity/v2/lookup", raw,
			"Content-Type", "application/json", "Authorization", "Bearer "+b.token))
	}
	for _, n := range []int{4} {
		f, err := b.load(ctx, n, func(c *Conn, seq int) error {
			status, ans, err := c.Do(reqs[seq%bodies])
			if err == nil && status != 200 {
				err = fmt.Errorf("lookup: %d %s", status, ans)
			}
			if err == nil && b.o.Bindings > 0 && !bytes.Contains(ans, []byte("@user")) {
				err = errors.New("lookup: no bound address found (populate the data dir with --bindings)")
			}
			return err
		})
		if err != nil {
			return err
		}
		b.printf("lookup 1000 hashes %3d conn %s  load %s\n", n, f, loadAvg())
	}
	return nil
}

func (b *bench) isValid(ctx context.Context) error {
	c, err := Dial(b.o.URL)
	if err != nil {
		return err
	}
	pub, eph, err := b.storeInvite(c, fmt.Sprintf("iv-%s@bench.test", run))
	c.Close()
	if err != nil {
		return err
	}
	for _, k := range []struct{ name, path string }{
		{"pubkey/isvalid", "/_matrix/identity/v2/pubkey/isvalid?public_key=" + url.QueryEscape(pub)},
		{"ephemeral/isvalid", "/_matrix/identity/v2/pubkey/ephemeral/isvalid?public_key=" + url.QueryEscape(eph)},
	} {
		req := NewRequest(b.o.URL, "GET", k.path, nil)
		f, err := b.load(ctx, 16, func(c *Conn, _ int) error {
			status, ans, err := c.Do(req)
			if err == nil && (status != 200 || !bytes.Contains(ans, []byte("true"))) {
				err = fmt.Errorf("%s: %d %s", k.name, status, ans)
			}
			return err
		})
		if err != nil {
			return err
		}
		b.printf("%-18s  16 conn %s  load %s\n", k.name, f, loadAvg())
	}
	return nil
}
