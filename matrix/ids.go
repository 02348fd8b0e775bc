package matrix

import (
	"strings"

	"github.com/herald-im/herald/internal/textnorm"
)

// ValidUserID is a loose check of a Matrix user ID, "@localpart:server", of
// at most 255 bytes. Whitespace, NUL, "/" and the characters textnorm
// refuses (control, format such as bidi and zero-width, undecodable) are
// refused: user IDs end up in emails, logs and bbolt keys.
func ValidUserID(s string) bool {
	local, server, ok := strings.Cut(s, ":")
	return ok && len(local) > 1 && local[0] == '@' && server != "" && len(s) <= 255 &&
		!strings.ContainsAny(s, " \t\r\n\x00/") && !strings.ContainsFunc(s, textnorm.Refused)
}

// ServerName is the server part of a user ID, lower-cased ("" if it has
// none). Server names are DNS names or IP literals, which compare without
// regard to case, so lower case is the one form Herald stores and compares.
func ServerName(userID string) string {
	_, server, _ := strings.Cut(userID, ":")
	return strings.ToLower(server)
}
