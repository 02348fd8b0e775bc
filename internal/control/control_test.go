package control

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func serve(t *testing.T, h Handler) (string, func()) {
	t.Helper()
	path := Path(t.TempDir())
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		Serve(ctx, ln, h, slog.New(slog.DiscardHandler))
		close(done)
	}()
	stop := func() {
		cancel()
		<-done
	}
	t.Cleanup(stop)
	return path, stop
}

func TestCallAnswers(t *testing.T) {
	var mu sync.Mutex
	running, most := 0, 0
	path, stop := serve(t, func(ctx context.Context, req Request, _ io.Writer) Response {
		mu.Lock()
		running++
		most = max(most, running)
		mu.Unlock()
		defer func() { mu.Lock(); running--; mu.Unlock() }()
		if req.Args[0] == "bad" {
			return Response{Error: "no such thing", Usage: true}
		}
		return Response{Output: strings.Join(req.Args, " ") + " " + req.Input + " by " + req.By}
	})
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket %v %v", st, err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := Call(context.Background(), path, Request{Args: []string{"keys", "list"}, Input: "x", By: "cli:test"}, nil)
			if err != nil || resp.Output != "keys list x by cli:test" || resp.Error != "" {
				t.Errorf("call: %+v %v", resp, err)
			}
		}()
	}
	wg.Wait()
	if most != 1 {
		t.Errorf("%d requests ran at once, want 1", most)
	}
	resp, err := Call(context.Background(), path, Request{Args: []string{"bad"}}, nil)
	if err != nil || resp.Error != "no such thing" || !resp.Usage {
		t.Fatalf("error answer: %+v %v", resp, err)
	}
	stop()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("socket left after stop: %v", err)
	}
	if _, err := Call(context.Background(), path, Request{Args: []string{"keys"}}, nil); !errors.Is(err, ErrNoServer) {
		t.Fatalf("no server: %v", err)
	}
}

// A request line longer than MaxRequestBytes, or not JSON, gets an error
// answer and the handler never runs; one just under the limit is served.
func TestBadRequests(t *testing.T) {
	path, _ := serve(t, func(ctx context.Context, req Request, _ io.Writer) Response {
		t.Errorf("handler ran for %v", req.Args)
		return Response{}
	})
	for line, want := range map[string]string{
		strings.Repeat("a", MaxRequestBytes+10) + "\n": "request too long",
		"{nope\n":            "malformed request",
		`{"args":[]}` + "\n": "malformed request",
	} {
		conn, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		go conn.Write([]byte(line))
		answer, err := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		if err != nil || !strings.Contains(answer, `"error":"control: `+want) {
			t.Errorf("answer to %.20q: %q %v", line, answer, err)
		}
	}
}

func TestLongRequestServed(t *testing.T) {
	path, _ := serve(t, func(ctx context.Context, req Request, _ io.Writer) Response {
		return Response{Output: req.Input[:3]}
	})
	resp, err := Call(context.Background(), path, Request{Args: []string{"x"}, Input: "abc" + strings.Repeat("z", MaxRequestBytes-100)}, nil)
	if err != nil || resp.Output != "abc" {
		t.Fatalf("long request: %+v %v", resp, err)
	}
}

// A socket file left by a killed server is replaced; a regular file is not.
func TestListenReplacesStaleSocket(t *testing.T) {
	dir := t.TempDir()
	path := Path(dir)
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := Call(context.Background(), path, Request{Args: []string{"x"}}, nil); !errors.Is(err, ErrNoServer) {
		t.Fatalf("stale socket: %v", err)
	}
	ln, err = Listen(path)
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	ln.Close()
	other := filepath.Join(dir, "file")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(other); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("listen over a regular file: %v", err)
	}
}

// A handler's stream reaches consume whole, then the response line; a
// consumer that gives up ends the call and the handler's writes fail.
func TestStream(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 100_000) // 1.6 MB, several chunks
	handlerErr := make(chan error, 1)
	path, _ := serve(t, func(ctx context.Context, req Request, stream io.Writer) Response {
		for off := 0; off < len(data); off += 70_001 {
			if _, err := stream.Write(data[off:min(off+70_001, len(data))]); err != nil {
				handlerErr <- err
				return Response{Error: err.Error()}
			}
		}
		handlerErr <- nil
		return Response{Output: "sent"}
	})
	var got []byte
	resp, err := Call(context.Background(), path, Request{Args: []string{"backup"}}, func(r io.Reader) error {
		var err error
		got, err = io.ReadAll(r)
		return err
	})
	if err != nil || resp.Output != "sent" || resp.Stream || !bytes.Equal(got, data) {
		t.Fatalf("stream: %+v %v, %d bytes of %d", resp, err, len(got), len(data))
	}
	if err := <-handlerErr; err != nil {
		t.Fatal(err)
	}
	giveUp := errors.New("disk full")
	if _, err := Call(context.Background(), path, Request{Args: []string{"backup"}}, func(r io.Reader) error {
		_, _ = r.Read(make([]byte, 10))
		return giveUp
	}); !errors.Is(err, giveUp) {
		t.Fatalf("consumer error: %v", err)
	}
	if err := <-handlerErr; err == nil {
		t.Fatal("the handler's writes succeeded after the client left")
	}
}
