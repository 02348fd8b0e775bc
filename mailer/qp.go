package mailer

// appendQP appends s quoted-printable (RFC 2045 section 6.7) with CRLF line
// endings, ending with CRLF: byte for byte what mime/quotedprintable.Writer
// writes (then closed) for s with its line endings made "\n" and a final
// "\n" added when missing, which is how Compose used it. The Writer handles
// one byte at a time through its 78-byte line buffer; this copies each run of
// bytes that need no encoding at once, and was a sixth of the mail worker's
// rendering CPU before. FuzzWriteQPMatchesStdlib checks it against the Writer.
//
// The rules it follows are the Writer's: a line holds at most 75 characters
// and a soft line break "="; printable ASCII but '=', and space and tab, are
// written as they are; every other byte is "=XX" (upper-case hex), never
// split by a soft break; a space or tab that ends a line (or the text) is
// written "=20" or "=09" instead, with a soft break before it if it no
// longer fits.
func appendQP(dst []byte, s string) []byte {
	col := 0 // bytes on the current output line
	// endLine ends the current line; a literal space or tab at its end is
	// encoded (an encoded byte ends with a hex digit, never with one).
	endLine := func() {
		if col > 0 {
			if c := dst[len(dst)-1]; c == ' ' || c == '\t' {
				dst = dst[:len(dst)-1]
				col--
				if col > qpMaxCol-3 {
					dst = append(dst, "=\r\n"...)
					col = 0
				}
				dst = append(dst, '=', qpHex[c>>4], qpHex[c&0x0f])
			}
		}
		dst = append(dst, '\r', '\n')
		col = 0
	}
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case qpLiteral[c]:
			j := i + 1
			for j < len(s) && qpLiteral[s[j]] {
				j++
			}
			for i < j {
				if col == qpMaxCol {
					dst = append(dst, "=\r\n"...)
					col = 0
				}
				n := min(qpMaxCol-col, j-i)
				dst = append(dst, s[i:i+n]...)
				col += n
				i += n
			}
		case c == '\n':
			endLine()
			i++
		case c == '\r':
			endLine()
			i++
			if i < len(s) && s[i] == '\n' {
				i++
			}
		default:
			if col > qpMaxCol-3 {
				dst = append(dst, "=\r\n"...)
				col = 0
			}
			dst = append(dst, '=', qpHex[c>>4], qpHex[c&0x0f])
			col += 3
			i++
		}
	}
	if len(s) == 0 || (s[len(s)-1] != '\n' && s[len(s)-1] != '\r') {
		endLine()
	}
	return dst
}

// qpMaxCol is the most characters on a line before a soft line break "=",
// which makes 76 (RFC 2045's limit).
const qpMaxCol = 75

const qpHex = "0123456789ABCDEF"

// qpLiteral marks the bytes written as they are: printable ASCII but '=',
// and space and tab.
var qpLiteral = func() (t [256]bool) {
	for c := '!'; c <= '~'; c++ {
		t[c] = c != '='
	}
	t[' '], t['\t'] = true, true
	return t
}()
