// Package loadgen is the HTTP client of Herald's benchmarks: one keep-alive
// HTTP/1.1 connection per benchmark goroutine, requests written from bytes
// prepared once, answers read with a small parser (Content-Length or chunked
// bodies). net/http's Transport costs about as much CPU per request as
// Herald's side of a cheap request (a writer and a reader goroutine per
// connection, channel hand-offs, header maps); in a benchmark where client
// and server share the same cores, that would measure the client.
package loadgen

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
)

// Request is a request prepared once and sent many times.
type Request struct {
	head []byte // request line and headers up to the Content-Length value
	body []byte
}

// NewRequest prepares method path with the headers (name, value pairs) and
// body. A Content-Length header is added for a POST or PUT.
func NewRequest(baseURL, method, path string, body []byte, headers ...string) *Request {
	u, err := url.Parse(baseURL)
	if err != nil {
		panic(err)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: herald-bench\r\n", method, path, u.Host)
	for i := 0; i+1 < len(headers); i += 2 {
		fmt.Fprintf(&b, "%s: %s\r\n", headers[i], headers[i+1])
	}
	if body != nil || method == "POST" || method == "PUT" {
		b.WriteString("Content-Length: ")
	}
	return &Request{head: b.Bytes(), body: body}
}

// WithBody is r with another body (the same headers).
func (r *Request) WithBody(body []byte) *Request { return &Request{head: r.head, body: body} }

// Conn is one keep-alive connection. Not safe for concurrent use.
type Conn struct {
	addr string
	c    net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	body []byte
}

// Dial connects to baseURL's host.
func Dial(baseURL string) (*Conn, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, err
	}
	c := &Conn{addr: u.Host}
	return c, c.dial()
}

func (c *Conn) dial() error {
	nc, err := net.Dial("tcp", c.addr)
	if err != nil {
		return err
	}
	c.c, c.br, c.bw = nc, bufio.NewReaderSize(nc, 16<<10), bufio.NewWriterSize(nc, 16<<10)
	return nil
}

// Close closes the connection.
func (c *Conn) Close() error {
	if c.c == nil {
		return nil
	}
	return c.c.Close()
}

// Do sends r and reads the answer: its status and body (valid until the
// next Do). A connection the server closed is dialled again once.
func (c *Conn) Do(r *Request) (int, []byte, error) {
	st, body, err := c.do(r)
	if err != nil && c.c == nil {
		if err = c.dial(); err == nil {
			st, body, err = c.do(r)
		}
	}
	return st, body, err
}

func (c *Conn) do(r *Request) (int, []byte, error) {
	if c.c == nil {
		return 0, nil, errors.New("loadgen: not connected")
	}
	c.bw.Write(r.head)
	if bytes.HasSuffix(r.head, []byte("Content-Length: ")) {
		c.bw.WriteString(strconv.Itoa(len(r.body)))
		c.bw.WriteString("\r\n")
	}
	c.bw.WriteString("\r\n")
	c.bw.Write(r.body)
	if err := c.bw.Flush(); err != nil {
		c.drop()
		return 0, nil, err
	}
	st, body, closing, err := c.read()
	if err != nil || closing {
		c.drop()
	}
	return st, body, err
}

func (c *Conn) drop() {
	if c.c != nil {
		c.c.Close()
		c.c = nil
	}
}

var (
	hdrLength  = []byte("content-length:")
	hdrChunked = []byte("transfer-encoding: chunked")
	hdrClose   = []byte("connection: close")
)

func (c *Conn) read() (status int, body []byte, closing bool, err error) {
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		return 0, nil, false, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
		return 0, nil, false, fmt.Errorf("loadgen: bad status line %q", line)
	}
	status, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, nil, false, err
	}
	length, chunked := -1, false
	for {
		line, err = c.br.ReadSlice('\n')
		if err != nil {
			return 0, nil, false, err
		}
		h := bytes.TrimRight(line, "\r\n")
		if len(h) == 0 {
			break
		}
		switch {
		case hasPrefixFold(h, hdrLength):
			length, err = strconv.Atoi(string(bytes.TrimSpace(h[len(hdrLength):])))
			if err != nil {
				return 0, nil, false, err
			}
		case hasPrefixFold(h, hdrChunked):
			chunked = true
		case hasPrefixFold(h, hdrClose):
			closing = true
		}
	}
	c.body = c.body[:0]
	switch {
	case chunked:
		for {
			line, err = c.br.ReadSlice('\n')
			if err != nil {
				return 0, nil, false, err
			}
			n, err := strconv.ParseInt(string(bytes.TrimSpace(line)), 16, 64)
			if err != nil {
				return 0, nil, false, fmt.Errorf("loadgen: chunk size %q", line)
			}
			if n == 0 {
				if _, err := c.br.Discard(2); err != nil { // no trailers from Herald
					return 0, nil, false, err
				}
				break
			}
			if err := c.readN(int(n)); err != nil {
				return 0, nil, false, err
			}
			if _, err := c.br.Discard(2); err != nil {
				return 0, nil, false, err
			}
		}
	case length >= 0:
		if err := c.readN(length); err != nil {
			return 0, nil, false, err
		}
	default:
		return 0, nil, false, errors.New("loadgen: answer without length")
	}
	return status, c.body, closing, nil
}

func (c *Conn) readN(n int) error {
	start := len(c.body)
	c.body = append(c.body, make([]byte, n)...)
	_, err := io.ReadFull(c.br, c.body[start:])
	return err
}

func hasPrefixFold(s, lowerPrefix []byte) bool {
	return len(s) >= len(lowerPrefix) && bytes.EqualFold(s[:len(lowerPrefix)], lowerPrefix)
}
