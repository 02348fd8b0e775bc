package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	mfed "maunium.net/go/mautrix/federation"
)

// Server-server discovery (spec: "Resolving server names"): IP literal or
// explicit port, else /.well-known/matrix/server, else SRV
// (_matrix-fed._tcp, then _matrix._tcp), else port 8448. Herald does it
// itself, with mautrix's server name parser and SRV lookup, so that it can
// cap the well-known answer, cache it as long as sydent and Synapse do, and
// cache failures for a shorter time.
const (
	// wellKnownLimit caps a /.well-known/matrix/server answer.
	wellKnownLimit = 50 << 10
	// wellKnownDefaultCache applies when the answer has no usable max-age;
	// an answer's max-age is honoured between wellKnownMinCache and
	// wellKnownMaxCache.
	wellKnownDefaultCache = 24 * time.Hour
	wellKnownMinCache     = time.Hour
	wellKnownMaxCache     = 48 * time.Hour
	// wellKnownFailureCache: no usable well-known (network error, non-200,
	// oversized or malformed answer) is remembered this long, and the
	// SRV/8448 result found without it with it.
	wellKnownFailureCache = time.Hour
	// resolveCacheMax bounds the cache: server names come from
	// unauthenticated requests (account/register's matrix_server_name).
	resolveCacheMax = 4096
)

// ErrInvalidServerName means a name is not a Matrix server name.
var ErrInvalidServerName = errors.New("not a valid Matrix server name")

// resolved is where to send a server's federation requests.
type resolved struct {
	base    *url.URL // https://host:port
	host    string   // Host header, and the name the certificate must cover
	expires time.Time
}

// endpoint finds the base URL and Host header for a server name:
// federation.servers first, then the cache, then discovery.
func (c *Client) endpoint(ctx context.Context, server string) (*url.URL, string, error) {
	if base, ok := c.opts.Servers[server]; ok {
		u, err := url.Parse(strings.TrimRight(base, "/"))
		if err != nil {
			return nil, "", err
		}
		return u, u.Host, nil
	}
	now := c.now()
	c.cacheMu.Lock()
	e, ok := c.cache[server]
	c.cacheMu.Unlock()
	if ok && now.Before(e.expires) {
		return e.base, e.host, nil
	}
	r, err := c.resolve(ctx, server)
	if err != nil {
		return nil, "", fmt.Errorf("resolve %s: %w", server, err)
	}
	c.cacheMu.Lock()
	if len(c.cache) >= resolveCacheMax {
		for k, v := range c.cache {
			if !now.Before(v.expires) {
				delete(c.cache, k)
			}
		}
		for k := range c.cache {
			if len(c.cache) < resolveCacheMax {
				break
			}
			delete(c.cache, k)
		}
	}
	c.cache[server] = r
	c.cacheMu.Unlock()
	return r.base, r.host, nil
}

// resolve runs the discovery steps for server.
func (c *Client) resolve(ctx context.Context, server string) (resolved, error) {
	hostname, port, ok := mfed.ParseServerName(server)
	if !ok {
		return resolved{}, ErrInvalidServerName
	}
	now := c.now()
	direct := func(host string, port uint16, hostHeader string, ttl time.Duration) resolved {
		if port == 0 {
			port = 8448
		}
		return resolved{
			base:    &url.URL{Scheme: "https", Host: net.JoinHostPort(host, strconv.Itoa(int(port)))},
			host:    hostHeader,
			expires: now.Add(ttl),
		}
	}
	// Steps 1 and 2: an IP literal or an explicit port is used as is.
	if isIP(hostname) || port != 0 {
		return direct(hostname, port, server, wellKnownDefaultCache), nil
	}
	// Step 3: /.well-known/matrix/server.
	hostHeader, ttl := server, wellKnownFailureCache
	if delegated, wkTTL, err := c.wellKnown(ctx, hostname); err == nil {
		h, p, ok := mfed.ParseServerName(delegated)
		if ok {
			hostHeader, ttl = delegated, wkTTL
			if isIP(h) || p != 0 {
				return direct(h, p, delegated, ttl), nil
			}
			hostname = h
		}
	} else if ctx.Err() != nil {
		return resolved{}, ctx.Err()
	}
	// Steps 3.3-6: SRV records of the (delegated) hostname, else port 8448.
	srvs, err := c.lookupSRV(ctx, hostname)
	if ctx.Err() != nil {
		return resolved{}, ctx.Err()
	}
	if err != nil {
		var dnsErr *net.DNSError
		if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
			ttl = min(ttl, wellKnownFailureCache)
		}
	}
	for _, s := range srvs {
		if target := strings.TrimSuffix(s.Target, "."); target != "" {
			return resolved{
				base:    &url.URL{Scheme: "https", Host: net.JoinHostPort(target, strconv.Itoa(int(s.Port)))},
				host:    hostHeader,
				expires: now.Add(ttl),
			}, nil
		}
	}
	return direct(hostname, 8448, hostHeader, ttl), nil
}

func isIP(host string) bool {
	_, err := netip.ParseAddr(host)
	return err == nil
}

// wellKnown fetches https://hostname/.well-known/matrix/server and returns
// its m.server and how long to cache it. It goes through the plain client,
// whose dialer refuses private addresses on every hop of a redirect.
func (c *Client) wellKnown(ctx context.Context, hostname string) (string, time.Duration, error) {
	u := url.URL{Scheme: "https", Host: hostname, Path: "/.well-known/matrix/server"}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", 0, err
	}
	req.Header.Set("User-Agent", c.opts.UserAgent)
	resp, err := c.plain.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", 0, fmt.Errorf("well-known: status %d", resp.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, wellKnownLimit+1))
	if err != nil {
		return "", 0, err
	}
	if len(data) > wellKnownLimit {
		return "", 0, fmt.Errorf("well-known: larger than %d bytes", wellKnownLimit)
	}
	var body struct {
		Server string `json:"m.server"`
	}
	if err := json.Unmarshal(data, &body); err != nil || body.Server == "" {
		return "", 0, errors.New("well-known: no m.server")
	}
	return body.Server, wellKnownTTL(resp.Header), nil
}

// wellKnownTTL is the answer's max-age within [wellKnownMinCache,
// wellKnownMaxCache], or wellKnownDefaultCache without one.
func wellKnownTTL(h http.Header) time.Duration {
	for _, part := range strings.Split(h.Get("Cache-Control"), ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		if !strings.EqualFold(k, "max-age") {
			continue
		}
		secs, err := strconv.ParseInt(strings.Trim(v, `"`), 10, 64)
		if err != nil || secs < 0 {
			break
		}
		ttl := time.Duration(min(secs, int64(wellKnownMaxCache/time.Second))) * time.Second
		return max(wellKnownMinCache, ttl)
	}
	return wellKnownDefaultCache
}
