package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herald-im/herald/internal/spectest"
	"github.com/herald-im/herald/store"
)

// The CLI through the built binary: every command's --help, flags after the
// command, version from the build information, configuration warnings and
// refusals, and the deploy/ configuration files served for real.

// cliBins holds each test's built binary (in its own temporary directory,
// removed with it).
var cliBins sync.Map // *testing.T -> path

// moduleRoot is the repository root (e2e's parent).
func moduleRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// builtHerald builds cmd/herald for the test (once), with the VCS
// information stamped in when the checkout allows it (-buildvcs=auto).
func builtHerald(t *testing.T) string {
	t.Helper()
	if bin, ok := cliBins.Load(t); ok {
		return bin.(string)
	}
	bin := filepath.Join(t.TempDir(), "herald")
	out, err := exec.Command("go", "build", "-buildvcs=auto", "-o", bin, "github.com/herald-im/herald/cmd/herald").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cliBins.Store(t, bin)
	t.Cleanup(func() { cliBins.Delete(t) })
	return bin
}

// cleanEnv is the test's environment without HERALD_ variables, so the
// binary sees only what a test gives it.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HERALD_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// runHerald runs the binary to completion and returns stdout, stderr and the exit status.
func runHerald(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, builtHerald(t), args...)
	cmd.Env = cleanEnv(env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("herald %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), code
}

// serving is a running binary whose stderr is collected.
type serving struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs []string
	up   chan struct{}
	done chan error
}

// serveHerald starts the binary and waits for its "listening" log line on
// the main listener; the test's cleanup stops it with SIGINT.
func serveHerald(t *testing.T, env []string, args ...string) *serving {
	t.Helper()
	s := &serving{cmd: exec.Command(builtHerald(t), args...), up: make(chan struct{}), done: make(chan error, 1)}
	s.cmd.Env = cleanEnv(env...)
	pipe, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pipe)
		once := sync.Once{}
		for sc.Scan() {
			s.mu.Lock()
			s.logs = append(s.logs, sc.Text())
			s.mu.Unlock()
			if strings.Contains(sc.Text(), "msg=listening") || strings.Contains(sc.Text(), `"msg":"listening"`) {
				once.Do(func() { close(s.up) })
			}
		}
		s.done <- s.cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = s.cmd.Process.Signal(os.Interrupt)
		select {
		case <-s.done:
		case <-time.After(20 * time.Second):
			_ = s.cmd.Process.Kill()
			t.Error("herald did not stop on SIGINT")
		}
	})
	select {
	case <-s.up:
	case err := <-s.done:
		t.Fatalf("herald %v exited before listening: %v\n%s", args, err, s.log())
	case <-time.After(30 * time.Second):
		t.Fatalf("herald %v did not listen within 30s\n%s", args, s.log())
	}
	return s
}

func (s *serving) log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.logs, "\n")
}

func TestCLIHelpForEveryCommand(t *testing.T) {
	out, _, code := runHerald(t, nil, "help")
	if code != 0 {
		t.Fatalf("herald help: exit %d", code)
	}
	names := regexp.MustCompile(`(?m)^  ([a-z][a-z-]*)\s{2,}\S`).FindAllStringSubmatch(out, -1)
	if len(names) < 6 {
		t.Fatalf("herald help lists %d commands:\n%s", len(names), out)
	}
	for _, m := range names {
		name := m[1]
		for _, args := range [][]string{{name, "--help"}, {name, "-h"}, {"help", name}, {name, "help"}} {
			stdout, stderr, code := runHerald(t, nil, args...)
			if code != 0 || !strings.HasPrefix(stdout, "usage: herald ") || !strings.Contains(strings.SplitN(stdout, "\n", 2)[0], name) {
				t.Errorf("herald %s: exit %d, stdout %q, stderr %q", strings.Join(args, " "), code, stdout, stderr)
			}
		}
	}
	// admin help prints like the others (it used to be a usage error).
	stdout, _, code := runHerald(t, nil, "admin", "help")
	if code != 0 || !strings.HasPrefix(stdout, "usage: herald admin create") {
		t.Errorf("herald admin help: exit %d %q", code, stdout)
	}
	if _, stderr, code := runHerald(t, nil, "frobnicate"); code != 2 || !strings.Contains(stderr, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d %q", code, stderr)
	}
}

func TestCLIVersion(t *testing.T) {
	out, _, code := runHerald(t, nil, "version")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 4 || !strings.HasPrefix(lines[0], "herald ") || lines[2] != fmt.Sprintf("database schema %d", store.SchemaVersion) || !strings.HasPrefix(lines[3], "go1.") {
		t.Fatalf("herald version: exit %d\n%s", code, out)
	}
	// A clone (a .git directory) is stamped with its revision; a git
	// worktree (.git is a file) or an export without .git is not, which
	// the go command does not support.
	root := moduleRoot(t)
	if fi, err := os.Stat(filepath.Join(root, ".git")); err == nil && fi.IsDir() {
		head, err := exec.Command("git", "-C", root, "rev-parse", "HEAD").Output()
		if err != nil {
			t.Fatalf("git rev-parse: %v", err)
		}
		if !strings.HasPrefix(lines[1], "revision "+strings.TrimSpace(string(head))) {
			t.Errorf("version line %q, want revision %s", lines[1], head)
		}
	} else if lines[1] != "revision unknown (built without VCS information)" {
		t.Errorf("version line %q without a .git directory", lines[1])
	}
}

// Kubernetes injects HERALD_SERVICE_HOST, HERALD_PORT... beside a Service
// named herald: the binary warns about each, once, without its value, and
// serves. --config after the command works.
func TestCLIUnknownEnvWarnsAndServes(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	cfg := filepath.Join(dir, "herald.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("server_name: herald.test\nlisten: 127.0.0.1:%d\ndata_dir: %s\n", port, filepath.Join(dir, "data"))), 0o600)
	s := serveHerald(t, []string{"HERALD_SERVICE_HOST=10.96.7.7", "HERALD_PORT=tcp://10.96.7.7:8090", "HERALD_PORT_8090_TCP_ADDR=10.96.7.7"},
		"serve", "--config", cfg)
	client := &http.Client{Timeout: 10 * time.Second, Transport: spectest.Transport(t, nil)}
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/_matrix/identity/versions", port))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("versions: %d", resp.StatusCode)
	}
	logs := s.log()
	for _, name := range []string{"HERALD_SERVICE_HOST", "HERALD_PORT", "HERALD_PORT_8090_TCP_ADDR"} {
		n := 0
		for _, l := range strings.Split(logs, "\n") {
			if strings.Contains(l, "config: "+name+": unknown variable") {
				n++
				if !strings.Contains(l, "level=WARN") {
					t.Errorf("not a warning: %s", l)
				}
			}
		}
		if n != 1 {
			t.Errorf("%d warnings about %s:\n%s", n, name, logs)
		}
	}
	if strings.Contains(logs, "10.96.7.7") {
		t.Errorf("a warning shows the variable's value:\n%s", logs)
	}
}

func TestCLIConfigRefusalsAndWarnings(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	// A wildcard listen address without public_base_url: one line naming the key, exit 1.
	_, stderr, code := runHerald(t, []string{"HERALD_DATA_DIR=" + dir, fmt.Sprintf("HERALD_LISTEN=0.0.0.0:%d", port)}, "serve")
	if code != 1 || strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "herald: config: public_base_url: must be set when listen is a wildcard address") {
		t.Errorf("wildcard listen: exit %d %q", code, stderr)
	}
	// An unknown key in the file stays fatal.
	cfg := filepath.Join(dir, "bad.yaml")
	os.WriteFile(cfg, []byte("service_host: x\n"), 0o600)
	if _, stderr, code := runHerald(t, nil, "serve", "--config", cfg); code != 1 || !strings.Contains(stderr, "service_host: unknown key") {
		t.Errorf("unknown file key: exit %d %q", code, stderr)
	}
	// server_name left at the default beside another public host: a warning.
	s := serveHerald(t, []string{"HERALD_DATA_DIR=" + filepath.Join(dir, "data"), fmt.Sprintf("HERALD_LISTEN=127.0.0.1:%d", port), "HERALD_PUBLIC_BASE_URL=https://id.example.org"})
	if !strings.Contains(s.log(), `config: server_name: still the default \"localhost:8090\" while public_base_url names id.example.org`) {
		t.Errorf("no server_name warning:\n%s", s.log())
	}
}

// deploy/herald/herald.yaml (the compose example's Herald) loads and serves
// with the real binary: https with its self-signed certificate on the main
// listener and on the console's. Addresses and data_dir are moved to
// loopback and a temporary directory; everything else is the file's.
func TestDeployHeraldConfigServes(t *testing.T) {
	root := moduleRoot(t)
	port, adminPort := freePort(t), freePort(t)
	serveHerald(t, []string{
		fmt.Sprintf("HERALD_LISTEN=127.0.0.1:%d", port), fmt.Sprintf("HERALD_ADMIN_LISTEN=127.0.0.1:%d", adminPort),
		"HERALD_DATA_DIR=" + t.TempDir(),
	}, "serve", "--config", filepath.Join(root, "deploy", "herald", "herald.yaml"))
	insecure := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	client := &http.Client{Timeout: 10 * time.Second, Transport: spectest.Transport(t, insecure),
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get(fmt.Sprintf("https://127.0.0.1:%d/_matrix/identity/v2/pubkey/isvalid?public_key=x", port))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.TLS == nil {
		t.Fatalf("main listener: %d, TLS %v", resp.StatusCode, resp.TLS != nil)
	}
	// The console answers over https, as the compose file's comment says.
	waitFor(t, "the console listener", func() bool {
		resp, err := client.Get(fmt.Sprintf("https://127.0.0.1:%d/admin/", adminPort))
		if err != nil {
			return false
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.TLS != nil && resp.StatusCode < 500
	})
}

// deploy/image/herald.yaml (the image's built-in configuration) listens on
// every interface, so it needs public_base_url: refused without it, served
// with it.
func TestDeployImageConfig(t *testing.T) {
	root := moduleRoot(t)
	cfg := filepath.Join(root, "deploy", "image", "herald.yaml")
	data := t.TempDir()
	_, stderr, code := runHerald(t, []string{"HERALD_CONFIG=" + cfg, "HERALD_DATA_DIR=" + data}, "serve")
	if code != 1 || !strings.Contains(stderr, "config: public_base_url: must be set when listen is a wildcard address (0.0.0.0:8090)") {
		t.Errorf("image config without public_base_url: exit %d %q", code, stderr)
	}
	port := freePort(t)
	serveHerald(t, []string{"HERALD_CONFIG=" + cfg, "HERALD_DATA_DIR=" + data, fmt.Sprintf("HERALD_LISTEN=127.0.0.1:%d", port),
		"HERALD_PUBLIC_BASE_URL=https://id.example.org", "HERALD_SERVER_NAME=id.example.org"})
}

// herald admin create while the binary serves: a new account is saved by the
// running server; the same name again without --replace exits 1 and says so.
func TestCLIAdminCreateExistingWhileServing(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	cfg := filepath.Join(dir, "herald.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("server_name: herald.test\nlisten: 127.0.0.1:%d\ndata_dir: %s\n", port, filepath.Join(dir, "data"))), 0o600)
	serveHerald(t, nil, "--config", cfg)
	create := func(password string, args ...string) (string, string, int) {
		cmd := exec.Command(builtHerald(t), append([]string{"admin", "create", "ops"}, args...)...)
		cmd.Env = cleanEnv()
		cmd.Stdin = strings.NewReader(password + "\n")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
	}
	if out, stderr, code := create("a good long password", "--config", cfg); code != 0 || !strings.Contains(out, `"ops" saved`) {
		t.Fatalf("create: exit %d %q %q", code, out, stderr)
	}
	if out, stderr, code := create("another long password", "--config", cfg); code != 1 || !strings.Contains(stderr, "exists already (use --replace") {
		t.Fatalf("create again: exit %d %q %q", code, out, stderr)
	}
	if out, stderr, code := create("another long password", "--replace", "--config", cfg); code != 0 || !strings.Contains(out, "saved") {
		t.Fatalf("create --replace: exit %d %q %q", code, out, stderr)
	}
}
