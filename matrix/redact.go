package matrix

import "strings"

// RedactEmail shortens an address for logs: "alice@example.org" becomes
// "a...@e...". Use it for every address that reaches a log line.
func RedactEmail(addr string) string {
	first := func(s string) string {
		for _, r := range s {
			return string(r) + "..."
		}
		return "..."
	}
	local, domain, ok := strings.Cut(addr, "@")
	if !ok {
		return first(addr)
	}
	return first(local) + "@" + first(domain)
}
