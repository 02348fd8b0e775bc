package invites

import (
	"strings"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/ratelimit"
	"github.com/herald-im/herald/internal/textnorm"
	"github.com/herald-im/herald/matrix"
)

// policy holds the operator's blocklists and email domain lists. Names and
// text are compared in one normalised form on both sides (internal/textnorm),
// so spelling a name differently does not get past a list: server names
// without port or trailing dot, lower-cased, in IDNA ASCII form; keywords and
// the text they are searched in NFKC case-folded with format characters
// (zero-width spaces, bidi controls) removed.
type policy struct {
	rooms       map[string]bool
	homeservers []string // exact names, or "*.example.org" / ".example.org" for subdomains
	keywords    []string // textnorm.Keyword form
	allow, deny []string // email domains, same matching as homeservers
}

func newPolicy(c config.Invites) (*policy, error) {
	p := &policy{rooms: map[string]bool{}}
	for _, r := range c.Blocklist.Rooms {
		p.rooms[strings.TrimSpace(r)] = true
	}
	for _, h := range c.Blocklist.Homeservers {
		p.homeservers = append(p.homeservers, domainPattern(h))
	}
	for _, k := range c.Blocklist.Keywords {
		if k = textnorm.Keyword(k); k != "" {
			p.keywords = append(p.keywords, k)
		}
	}
	for _, d := range c.EmailDomains.Allow {
		p.allow = append(p.allow, domainPattern(d))
	}
	for _, d := range c.EmailDomains.Deny {
		p.deny = append(p.deny, domainPattern(d))
	}
	return p, nil
}

// domainPattern normalises a configured domain or server name, keeping its
// "*." or "." subdomain prefix.
func domainPattern(d string) string {
	d = strings.TrimSpace(d)
	for _, prefix := range []string{"*.", "."} {
		if rest, ok := strings.CutPrefix(d, prefix); ok {
			return prefix + textnorm.ServerName(rest)
		}
	}
	return textnorm.ServerName(d)
}

// domainMatches reports whether name matches one of patterns: an exact name,
// or "*.example.org" / ".example.org" matching example.org's subdomains (and
// example.org itself for the "*." form). name is normalised first (port and
// trailing dot removed, lower case, IDNA ASCII form), as the patterns were.
func domainMatches(name string, patterns []string) bool {
	name = textnorm.ServerName(name)
	for _, p := range patterns {
		switch {
		case strings.HasPrefix(p, "*."):
			if name == p[2:] || strings.HasSuffix(name, p[1:]) {
				return true
			}
		case strings.HasPrefix(p, "."):
			if strings.HasSuffix(name, p) {
				return true
			}
		case name == p:
			return true
		}
	}
	return false
}

// check refuses an invite the operator does not want sent (403 M_FORBIDDEN).
// The message does not say which list matched, so spammers learn little.
func (p *policy) check(inv *Invite) error {
	_, domain, _ := strings.Cut(inv.Address, "@")
	if len(p.allow) > 0 && !domainMatches(domain, p.allow) {
		return matrix.Forbidden("Invites to this email domain are not accepted by this identity server")
	}
	if domainMatches(domain, p.deny) {
		return matrix.Forbidden("Invites to this email domain are not accepted by this identity server")
	}
	if p.rooms[inv.RoomID] || (inv.RoomAlias != "" && p.rooms[inv.RoomAlias]) {
		return matrix.Forbidden("Invites from this room are not accepted by this identity server")
	}
	if domainMatches(inv.Homeserver, p.homeservers) {
		return matrix.Forbidden("Invites from this homeserver are not accepted by this identity server")
	}
	if len(p.keywords) > 0 {
		for _, text := range []string{textnorm.Keyword(inv.RoomName), textnorm.Keyword(inv.SenderDisplayName)} {
			for _, k := range p.keywords {
				if strings.Contains(text, k) {
					return matrix.Forbidden("This invite was refused by this identity server's content policy")
				}
			}
		}
	}
	return nil
}

// limits are the in-memory per-key rate limiters for store-invite. Each set
// remembers a bounded number of keys (internal/ratelimit), so the
// unauthenticated v1 store-invite cannot grow memory with fresh senders,
// rooms or addresses.
type limits struct {
	now  func() time.Time
	sets [4]*ratelimit.Set // sender, room, address, homeserver
}

func newLimits(c config.Invites, now func() time.Time) *limits {
	rl := c.RateLimits
	set := func(r config.RateLimit) *ratelimit.Set { return ratelimit.New(r.PerHour, r.Burst, 0) }
	return &limits{now: now, sets: [4]*ratelimit.Set{set(rl.Sender), set(rl.Room), set(rl.Address), set(rl.Homeserver)}}
}

// allow takes one token from each of the four limiters, or none: it returns
// 429 M_LIMIT_EXCEEDED with the longest wait when any is exhausted.
func (l *limits) allow(sender, room, address, homeserver string) error {
	_, wait := ratelimit.Take(l.now(), ratelimit.Key{Set: l.sets[0], Key: sender}, ratelimit.Key{Set: l.sets[1], Key: room},
		ratelimit.Key{Set: l.sets[2], Key: address}, ratelimit.Key{Set: l.sets[3], Key: homeserver})
	if wait > 0 {
		return matrix.LimitExceeded(ratelimit.Millis(wait))
	}
	return nil
}
