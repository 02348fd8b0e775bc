// Package control is the command channel between the herald CLI and a
// running server: a unix socket in data_dir (mode 0600, so only the server's
// user and root may use it: the file permissions are the authentication), one
// JSON request line and one JSON response line per connection. A command
// that sends data back (a backup) streams it between the two: a line
// {"stream":true}, then chunks (4-byte big-endian length, bytes) ended by an
// empty chunk, then the response line. It needs no network listener. When no
// server answers, the CLI opens the data dir itself.
package control

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// SocketName is the control socket's file name inside data_dir.
const SocketName = "control.sock"

// Path is the control socket of the Herald serving dataDir.
func Path(dataDir string) string { return filepath.Join(dataDir, SocketName) }

// MaxRequestBytes bounds one request line; a longer one is refused, so a
// client cannot grow the server's memory.
const MaxRequestBytes = 64 << 10

// Request is one command: the arguments after `herald`, e.g.
// ["invites", "revoke", "7"].
type Request struct {
	Args []string `json:"args"`
	// Input is what the command would read from standard input (a password).
	Input string `json:"input,omitempty"`
	// By names who asked, for audit records ("cli:root").
	By string `json:"by,omitempty"`
}

// Response is a command's outcome.
type Response struct {
	// Stream, in the first line only, announces a data stream before the
	// response line.
	Stream bool   `json:"stream,omitempty"`
	Output string `json:"output"`
	Error  string `json:"error,omitempty"`
	// Usage marks Error as a mistake on the command line (exit status 2).
	Usage bool `json:"usage,omitempty"`
}

// Handler runs one request, writing any data for the client to stream.
// Requests are run one at a time.
type Handler func(ctx context.Context, req Request, stream io.Writer) Response

// chunkMax bounds one stream chunk.
const chunkMax = 256 << 10

// streamWriteTimeout: a client that stops reading a stream for this long
// is dropped, so it cannot hold the server's read transaction open.
const streamWriteTimeout = time.Minute

// ErrNoServer means no Herald answers on the socket: the CLI may open the
// data dir itself.
var ErrNoServer = errors.New("no Herald answers on the control socket")

// Listen creates the socket at path, mode 0600. A socket file left by a
// server that died is replaced: the caller holds the database lock, so no
// other server can be using it.
func Listen(path string) (net.Listener, error) {
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("control socket: %s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("control socket: remove stale %s: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return ln, nil
}

// Serve answers requests on ln until ctx is done, then closes ln (which
// removes the socket file).
func Serve(ctx context.Context, ln net.Listener, h Handler, log *slog.Logger) {
	var (
		mu sync.Mutex // one command at a time: a backup never overlaps a key rotation
		wg sync.WaitGroup
	)
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil {
				log.Error("control socket stopped", "err", err)
			}
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			serveConn(ctx, conn, h, &mu, log)
		}()
	}
	wg.Wait()
}

func serveConn(ctx context.Context, conn net.Conn, h Handler, mu *sync.Mutex, log *slog.Logger) {
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(io.LimitReader(conn, MaxRequestBytes+1)).ReadBytes('\n')
	if err != nil && len(line) == 0 {
		return
	}
	var req Request
	var resp Response
	if len(line) > MaxRequestBytes {
		resp = Response{Error: "control: request too long"}
	} else if err := json.Unmarshal(line, &req); err != nil || len(req.Args) == 0 {
		resp = Response{Error: "control: malformed request", Usage: true}
	} else {
		_ = conn.SetReadDeadline(time.Time{})
		mu.Lock()
		log.Info("control command", "command", commandName(req.Args), "by", req.By)
		sw := &streamWriter{conn: conn}
		resp = h(ctx, req, sw)
		mu.Unlock()
		if sw.err != nil {
			return // the client is gone
		}
		if sw.started {
			if err := sw.chunk(nil); err != nil {
				return
			}
		}
	}
	resp.Stream = false
	raw, _ := json.Marshal(resp)
	_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, _ = conn.Write(append(raw, '\n'))
}

// streamWriter sends a handler's data as chunks, after the stream line.
type streamWriter struct {
	conn    net.Conn
	started bool
	err     error
}

func (w *streamWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if !w.started {
		w.started = true
		_ = w.conn.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
		if _, err := w.conn.Write([]byte(`{"stream":true}` + "\n")); err != nil {
			w.err = err
			return 0, err
		}
	}
	n := 0
	for len(p) > 0 {
		c := p[:min(len(p), chunkMax)]
		if err := w.chunk(c); err != nil {
			return n, err
		}
		n += len(c)
		p = p[len(c):]
	}
	return n, nil
}

func (w *streamWriter) chunk(p []byte) error {
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(p)))
	_ = w.conn.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	if _, err := w.conn.Write(append(hdr[:], p...)); err != nil {
		w.err = fmt.Errorf("control: the client stopped reading: %w", err)
		return w.err
	}
	return nil
}

// chunkReader reads a chunked stream up to its empty chunk.
type chunkReader struct {
	r    *bufio.Reader
	left int
	done bool
}

func (c *chunkReader) Read(p []byte) (int, error) {
	for c.left == 0 {
		if c.done {
			return 0, io.EOF
		}
		var hdr [4]byte
		if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
			return 0, fmt.Errorf("control: stream cut short: %w", io.ErrUnexpectedEOF)
		}
		c.left = int(binary.BigEndian.Uint32(hdr[:]))
		if c.left > chunkMax {
			return 0, errors.New("control: malformed stream")
		}
		if c.left == 0 {
			c.done = true
		}
	}
	n, err := c.r.Read(p[:min(len(p), c.left)])
	c.left -= n
	if err == io.EOF {
		err = fmt.Errorf("control: stream cut short: %w", io.ErrUnexpectedEOF)
	}
	return n, err
}

// commandName is the command without its arguments (which may be addresses).
func commandName(args []string) string {
	if len(args) > 1 {
		return args[0] + " " + args[1]
	}
	return args[0]
}

// Call sends req to the server listening at path and waits for its answer
// until ctx is done. It returns ErrNoServer when nothing listens there. If
// the server streams data, consume reads it (consume may be nil to discard
// it); an error from consume ends the call.
func Call(ctx context.Context, path string, req Request, consume func(io.Reader) error) (Response, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			return Response{}, ErrNoServer
		}
		return Response{}, fmt.Errorf("control socket %s: %w", path, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	raw, err := json.Marshal(req)
	if err != nil {
		return Response{}, err
	}
	if _, err := conn.Write(append(raw, '\n')); err != nil {
		return Response{}, fmt.Errorf("control socket: %w", err)
	}
	br := bufio.NewReader(conn)
	readLine := func() (Response, error) {
		var resp Response
		line, err := br.ReadBytes('\n')
		if err == nil {
			err = json.Unmarshal(line, &resp)
		}
		if err != nil {
			if ctx.Err() != nil {
				return Response{}, ctx.Err()
			}
			return Response{}, fmt.Errorf("control socket: no answer from the server: %w", err)
		}
		return resp, nil
	}
	resp, err := readLine()
	if err != nil || !resp.Stream {
		return resp, err
	}
	cr := &chunkReader{r: br}
	if consume != nil {
		if err := consume(cr); err != nil {
			return Response{}, err
		}
	}
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return Response{}, err
	}
	return readLine()
}
