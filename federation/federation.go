// Package federation makes Herald's outbound calls to homeservers: OpenID
// userinfo checks, onbind deliveries and server key fetches. It finds servers
// by the server-server discovery rules (resolve.go: well-known, SRV,
// port 8448) unless federation.servers overrides a name, and refuses private,
// loopback and link-local addresses unless told otherwise.
package federation

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"

	mfed "maunium.net/go/mautrix/federation"
)

// Options configures a Client.
type Options struct {
	// Servers maps server names to base URLs, bypassing discovery.
	Servers               map[string]string
	AllowPrivateAddresses bool
	InsecureSkipVerify    bool
	Timeout               time.Duration
	// UserAgent is sent on every request.
	UserAgent string

	// dialAddr, in tests, rewrites the address a connection is opened to
	// (after discovery, before the private address check).
	dialAddr func(addr string) string
}

// Client talks to homeservers.
type Client struct {
	opts    Options
	http    *http.Client // for resolved federation endpoints (custom TLS name)
	plain   *http.Client // for well-known lookups and overridden base URLs
	cacheMu sync.Mutex
	cache   map[string]resolved // discovery results (resolve.go)
	// tlsClients: one client per certificate name (withServerName).
	tlsClients map[string]*http.Client

	now       func() time.Time
	lookupSRV func(ctx context.Context, hostname string) ([]*net.SRV, error)
}

// ErrForbiddenAddress means a server resolved to an address Herald may not call.
var ErrForbiddenAddress = errors.New("address not allowed (private, loopback or link-local)")

// New builds a Client.
func New(opts Options) *Client {
	if opts.Timeout == 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.UserAgent == "" {
		opts.UserAgent = "Herald"
	}
	c := &Client{opts: opts, cache: map[string]resolved{}, tlsClients: map[string]*http.Client{}, now: time.Now, lookupSRV: lookupSRV}
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	if !opts.AllowPrivateAddresses {
		dialer.Control = refusePrivate
	}
	dial := dialer.DialContext
	if opts.dialAddr != nil {
		dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, opts.dialAddr(addr))
		}
	}
	newTransport := func() *http.Transport {
		return &http.Transport{
			DialContext:           dial,
			TLSClientConfig:       &tls.Config{InsecureSkipVerify: opts.InsecureSkipVerify, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout:   5 * time.Second,
			ResponseHeaderTimeout: opts.Timeout,
			MaxIdleConnsPerHost:   4,
			IdleConnTimeout:       60 * time.Second,
			ForceAttemptHTTP2:     true,
		}
	}
	noRedirects := func(req *http.Request, via []*http.Request) error { return http.ErrUseLastResponse }
	c.http = &http.Client{Transport: newTransport(), Timeout: opts.Timeout, CheckRedirect: noRedirects}
	// Well-known may redirect; the dialer's check applies to every hop.
	c.plain = &http.Client{Transport: newTransport(), Timeout: opts.Timeout, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if len(via) >= 5 {
			return errors.New("too many redirects")
		}
		return nil
	}}
	return c
}

func lookupSRV(ctx context.Context, hostname string) ([]*net.SRV, error) {
	return mfed.RequestSRV(ctx, net.DefaultResolver, hostname)
}

// refusePrivate runs on every connection after DNS resolution, so a name
// that resolves to a private address is refused too.
func refusePrivate(network, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return err
	}
	if Forbidden(ip) {
		return fmt.Errorf("%w: %s", ErrForbiddenAddress, ip)
	}
	return nil
}

var forbiddenPrefixes = func() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
		"192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
		"203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
		"::/128", "::1/128", "::/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64", "2001::/32", "2001:db8::/32", "fc00::/7", "fe80::/10", "ff00::/8",
	} {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}()

// Forbidden reports whether ip is private, loopback, link-local, CGNAT,
// multicast, documentation or otherwise special, including the IPv4-mapped and
// 6to4 forms of such IPv4 addresses. The deprecated IPv4-compatible range
// ::/96 and both NAT64 prefixes (64:ff9b::/96 and the local-use
// 64:ff9b:1::/48) are refused whole: they reach IPv4 hosts, private ones
// included, through a translator.
func Forbidden(ip netip.Addr) bool {
	ip = ip.Unmap()
	if ip.Is6() {
		b := ip.As16()
		if b[0] == 0x20 && b[1] == 0x02 { // 6to4: 2002:AABB:CCDD::/48 embeds an IPv4 address
			if Forbidden(netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]})) {
				return true
			}
		}
	}
	for _, p := range forbiddenPrefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Do sends method path?query to server with an optional body and returns the
// response with its body read (at most limit bytes).
func (c *Client) Do(ctx context.Context, server, method, path string, query url.Values, header http.Header, body []byte, limit int64) (*Response, error) {
	base, host, err := c.endpoint(ctx, server)
	if err != nil {
		return nil, err
	}
	u := *base
	u.Path = strings.TrimRight(base.Path, "/") + path
	u.RawQuery = query.Encode()
	var rd io.Reader
	if body != nil {
		rd = strings.NewReader(string(body))
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Host = host
	req.Header.Set("User-Agent", c.opts.UserAgent)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	client := c.http
	if _, overridden := c.opts.Servers[server]; !overridden && host != "" {
		// Verify the certificate against the delegated server name, not the IP.
		client = c.withServerName(hostOnly(host))
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, scrubURL(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("response from %s larger than %d bytes", server, limit)
	}
	return &Response{Status: resp.StatusCode, Header: resp.Header, Body: data}, nil
}

// Response is a homeserver's answer.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

// tlsClientsMax bounds the per-name TLS clients: names come from
// unauthenticated requests.
const tlsClientsMax = 1024

// withServerName returns a client whose TLS checks the certificate against
// name (the server name or its delegated hostname), not the dialled address.
func (c *Client) withServerName(name string) *http.Client {
	c.cacheMu.Lock()
	defer c.cacheMu.Unlock()
	if hc, ok := c.tlsClients[name]; ok {
		return hc
	}
	if len(c.tlsClients) >= tlsClientsMax {
		for k, hc := range c.tlsClients {
			hc.CloseIdleConnections() // requests in flight finish normally
			delete(c.tlsClients, k)
			if len(c.tlsClients) < tlsClientsMax/2 {
				break
			}
		}
	}
	base := c.http.Transport.(*http.Transport).Clone()
	base.TLSClientConfig.ServerName = name
	hc := &http.Client{Transport: base, Timeout: c.http.Timeout, CheckRedirect: c.http.CheckRedirect}
	c.tlsClients[name] = hc
	return hc
}

// scrubURL drops the query string from the URL inside err: it may carry an
// access token (OpenID userinfo), and errors end up in logs.
func scrubURL(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	clean := *ue
	if u, perr := url.Parse(ue.URL); perr == nil {
		u.RawQuery, u.User = "", nil
		clean.URL = u.String()
	} else {
		clean.URL = "(unparsable URL)"
	}
	return &clean
}
