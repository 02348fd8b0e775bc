package server

import (
	"fmt"
	"net"
	"strings"

	"github.com/labstack/echo/v4"
)

// clientIPExtractor is what c.RealIP() answers everywhere (request log,
// per-client rate limits, compat.v1_store_invite_allow): the TCP peer, or,
// when the peer is one of trusted_proxies, the right-most address in
// X-Forwarded-For that is not itself a trusted proxy. Echo's default RealIP
// believes X-Forwarded-For and X-Real-IP from anyone, which would let any
// client choose the address its limits are counted against; and its XFF
// extractor trusts loopback and private ranges unless told not to, so both
// are replaced here.
func clientIPExtractor(trusted []string) (echo.IPExtractor, error) {
	if len(trusted) == 0 {
		return echo.ExtractIPDirect(), nil
	}
	opts := []echo.TrustOption{echo.TrustLoopback(false), echo.TrustLinkLocal(false), echo.TrustPrivateNet(false)}
	for _, p := range trusted {
		if !strings.Contains(p, "/") {
			ip := net.ParseIP(p)
			if ip == nil {
				return nil, fmt.Errorf("trusted_proxies: %q is neither an IP address nor a CIDR range", p)
			}
			bits := 128
			if ip.To4() != nil {
				ip, bits = ip.To4(), 32
			}
			p = fmt.Sprintf("%s/%d", ip, bits)
		}
		_, n, err := net.ParseCIDR(p)
		if err != nil {
			return nil, fmt.Errorf("trusted_proxies: %q is neither an IP address nor a CIDR range", p)
		}
		opts = append(opts, echo.TrustIPRange(n))
	}
	return echo.ExtractIPFromXFFHeader(opts...), nil
}
