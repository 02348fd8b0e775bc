package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herald-im/herald/internal/pgtest"
	"github.com/herald-im/herald/internal/server"
)

// TestMain lets tests run the real main() in a child process.
func TestMain(m *testing.M) {
	if os.Getenv("TEST_HERALD_RUN_MAIN") == "1" {
		os.Args = append([]string{"herald"}, strings.Fields(os.Getenv("TEST_HERALD_ARGS"))...)
		main()
		os.Exit(0)
	}
	os.Exit(pgtest.Main(m)) // a throwaway PostgreSQL for the tests that ask for one
}

func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "herald.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestVersion(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if err := run(context.Background(), []string{"version"}, nil, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "herald ") {
		t.Fatalf("version output %q", out.String())
	}
}

// herald version prints the module version and the VCS revision from the
// build information.
func TestVersionFromBuildInfo(t *testing.T) {
	t.Parallel()
	rev := "0123456789abcdef0123456789abcdef01234567"
	settings := []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.time", Value: "2026-11-29T20:00:00Z"}, {Key: "vcs.modified", Value: "false"}}
	cases := []struct {
		bi   *debug.BuildInfo
		want string
	}{
		{&debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.4.0"}, Settings: settings},
			"herald v1.4.0\nrevision " + rev + " (2026-11-29T20:00:00Z)\ndatabase schema 2\ngo1.26.8 "},
		{&debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}, Settings: append(settings[:3:3], debug.BuildSetting{Key: "vcs.modified", Value: "true"})},
			"herald dev-0123456789ab-modified\nrevision " + rev + " (2026-11-29T20:00:00Z) modified\ndatabase schema 2\ngo1.26.8 "},
		{&debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}},
			"herald dev\nrevision unknown (built without VCS information)\ndatabase schema 2\ngo1.26.8 "},
	}
	for _, c := range cases {
		o := defaultRunOptions()
		o.buildInfo = func() (*debug.BuildInfo, bool) { return c.bi, true }
		var out bytes.Buffer
		err := runWith(context.Background(), o, []string{"version"}, nil, &out, io.Discard)
		if err != nil || !strings.HasPrefix(out.String(), c.want) || strings.Count(out.String(), "\n") != 4 {
			t.Errorf("version printed %q, want it to start %q", out.String(), c.want)
		}
	}
	if got := versionFrom("v9.9.9-docker", cases[0].bi, true); got != "v9.9.9-docker" {
		t.Errorf("-X main.version not preferred: %q", got)
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"frobnicate"}, {"serve", "extra"}, {"--nope"}, {"keys"}, {"keys", "retire"}, {"keys", "dance"}} {
		dataDir := t.TempDir()
		err := run(context.Background(), args, []string{"HERALD_DATA_DIR=" + dataDir}, io.Discard, io.Discard)
		if err == nil || exitCode(err) != 2 {
			t.Errorf("run %v: %v (exit %d), want a usage error", args, err, exitCode(err))
		}
	}
}

func TestBadConfig(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, yaml string
		env        []string
		key        string
	}{
		{"unknown key", "smtp:\n  hots: mail.example.org\n", nil, "smtp.hots"},
		{"unknown top-level key", "sever_name: x\n", nil, "sever_name"},
		{"wrong type", "listen: [1, 2]\n", nil, "listen"},
		{"wrong type bool", "compat:\n  v1: maybe\n", nil, "compat.v1"},
		{"wrong type number", "smtp:\n  port: many\n", nil, "smtp.port"},
		{"bad duration", "invites:\n  expiry: soon\n", nil, "invites.expiry"},
		{"missing cert file", "tls:\n  cert_file: /nonexistent/cert.pem\n  key_file: /nonexistent/key.pem\n", nil, "tls.cert_file"},
		{"cert without key", "tls:\n  cert_file: /etc/hostname\n", nil, "tls.key_file"},
		{"unparsable URL", "public_base_url: 'http://[::1'\n", nil, "public_base_url"},
		{"not an http URL", "public_base_url: 'ftp://example.org'\n", nil, "public_base_url"},
		{"bad federation URL", "federation:\n  servers:\n    hs.example.org: 'hs.example.org:8448'\n", nil, "federation.servers.hs.example.org"},
		{"bad enum", "smtp:\n  security: ssl\n", nil, "smtp.security"},
		{"bad server_name", "server_name: 'https://id.example.org'\n", nil, "server_name"},
		{"terms without version", "terms:\n  policies:\n    privacy:\n      en: {name: Privacy, url: 'https://x.test/p'}\n", nil, "terms.policies.privacy.version"},
		{"env wrong type", "", []string{"HERALD_SMTP_PORT=abc"}, "smtp.port"},
		{"not YAML", "server_name: [unclosed\n", nil, "YAML"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := writeConfig(t, c.yaml)
			env := append([]string{"HERALD_DATA_DIR=" + t.TempDir()}, c.env...)
			err := run(context.Background(), []string{"--config", path}, env, io.Discard, io.Discard)
			if err == nil {
				t.Fatal("bad config accepted")
			}
			msg := err.Error()
			if !strings.Contains(msg, c.key) || strings.Contains(oneLine(err), "\n") || exitCode(err) == 0 {
				t.Errorf("error %q should name %q on one line", msg, c.key)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		err := run(context.Background(), []string{"--config", "/nonexistent/herald.yaml"}, nil, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "/nonexistent/herald.yaml") {
			t.Fatalf("missing config file: %v", err)
		}
	})
	t.Run("HERALD_CONFIG", func(t *testing.T) {
		path := writeConfig(t, "smtp:\n  hots: x\n")
		err := run(context.Background(), nil, []string{"HERALD_CONFIG=" + path}, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "smtp.hots") {
			t.Fatalf("HERALD_CONFIG not read: %v", err)
		}
	})
}

// An unknown HERALD_ variable is one warning line naming it (not its
// value), and the command runs.
func TestUnknownEnvWarning(t *testing.T) {
	t.Parallel()
	var out, logs bytes.Buffer
	env := []string{"HERALD_DATA_DIR=" + t.TempDir(), "HERALD_SERVER_NAME=herald.test", "HERALD_SERVICE_PORT=8090", "HERALD_SMTP_HOTS=secret-value"}
	if err := run(context.Background(), []string{"keys", "list"}, env, &out, &logs); err != nil {
		t.Fatalf("keys list with unknown HERALD_ variables: %v", err)
	}
	var lines []string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "HERALD_") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 2 || !strings.Contains(lines[0], "HERALD_SERVICE_PORT") || !strings.Contains(lines[1], "HERALD_SMTP_HOTS") ||
		!strings.Contains(lines[0], "level=WARN") || strings.Contains(logs.String(), "secret-value") {
		t.Errorf("warnings:\n%s", logs.String())
	}
}

// startServe runs `herald serve` in-process and returns its base URL and a
// function that stops it (as SIGTERM would) and returns run's error.
func startServe(t *testing.T, env []string, args ...string) (string, func() error) {
	t.Helper()
	return startServeWith(t, server.Options{}, env, args...)
}

// startServeWith is startServe with opts handed to server.New.
func startServeWith(t *testing.T, opts server.Options, env []string, args ...string) (string, func() error) {
	t.Helper()
	addrc := make(chan net.Addr, 1)
	opts.Listening = func(a net.Addr) { addrc <- a }
	o := defaultRunOptions()
	o.server = opts
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runWith(ctx, o, args, env, io.Discard, io.Discard) }()
	var addr net.Addr
	select {
	case addr = <-addrc:
	case err := <-done:
		cancel()
		t.Fatalf("serve: %v", err)
	}
	var stopped bool
	var result error
	stop := func() error {
		if !stopped {
			stopped = true
			cancel()
			result = <-done
		}
		return result
	}
	t.Cleanup(func() { stop() })
	return "http://" + addr.String(), stop
}

func TestServeAndSecondInstance(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	env := []string{"HERALD_DATA_DIR=" + dataDir, "HERALD_LISTEN=127.0.0.1:0", "HERALD_SERVER_NAME=herald.test"}
	base, stop := startServe(t, env)
	resp, err := http.Get(base + "/_matrix/identity/versions")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("versions: %d", resp.StatusCode)
	}

	// A second Herald on the same data_dir says so and exits.
	err = run(context.Background(), nil, env, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "in use by another Herald") || exitCode(err) == 0 {
		t.Fatalf("second instance: %v", err)
	}

	if err := stop(); err != nil {
		t.Fatalf("graceful stop: %v", err)
	}
	// After a clean stop the data_dir can be used again.
	_, stop = startServe(t, env)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func keysCLI(t *testing.T, dataDir string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := run(context.Background(), append([]string{"keys"}, args...), []string{"HERALD_DATA_DIR=" + dataDir, "HERALD_SERVER_NAME=herald.test"}, &out, io.Discard)
	return out.String(), err
}

var keyLine = regexp.MustCompile(`(?m)^(ed25519:\S+)\s+(current|valid|retired \S+)\s+\S+\s+(\S+)$`)

func TestKeysCommand(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	// On a fresh data_dir the keys commands open it as serve does: the first
	// key and the database that records it are made together, so a later
	// start accepts them.
	out, err := keysCLI(t, dataDir, "list")
	if err != nil {
		t.Fatal(err)
	}
	m := keyLine.FindAllStringSubmatch(out, -1)
	if len(m) != 1 || m[0][2] != "current" {
		t.Fatalf("list on a fresh data_dir:\n%s", out)
	}
	first := m[0][1]
	if st, err := os.Stat(filepath.Join(dataDir, "keys", strings.ReplaceAll(first, ":", "_")+".jwk")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v", err)
	}

	if out, err = keysCLI(t, dataDir, "rotate"); err != nil || !strings.Contains(out, "new current key ed25519:") {
		t.Fatalf("rotate: %v\n%s", err, out)
	}
	out, _ = keysCLI(t, dataDir, "list")
	m = keyLine.FindAllStringSubmatch(out, -1)
	if len(m) != 2 || m[0][2] != "current" || m[1][1] != first || m[1][2] != "valid" {
		t.Fatalf("list after rotate:\n%s", out)
	}
	second := m[0][1]
	if _, err := keysCLI(t, dataDir, "retire", second); err == nil {
		t.Error("retiring the current key succeeded")
	}
	if _, err := keysCLI(t, dataDir, "retire", "ed25519:nope"); err == nil {
		t.Error("retiring an unknown key succeeded")
	}
	if out, err := keysCLI(t, dataDir, "retire", first); err != nil {
		t.Fatalf("retire: %v %s", err, out)
	}
	out, _ = keysCLI(t, dataDir, "list")
	m = keyLine.FindAllStringSubmatch(out, -1)
	if len(m) != 2 || !strings.HasPrefix(m[1][2], "retired ") {
		t.Fatalf("list after retire:\n%s", out)
	}
}

// `herald keys rotate` while Herald runs: the server picks the new key up.
func TestKeysRotateWhileServing(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	base, _ := startServeWith(t, server.Options{Intervals: server.Intervals{KeyReload: 20 * time.Millisecond}}, []string{"HERALD_DATA_DIR=" + dataDir, "HERALD_LISTEN=127.0.0.1:0", "HERALD_SERVER_NAME=herald.test"})
	out, err := keysCLI(t, dataDir, "rotate")
	if err != nil {
		t.Fatal(err)
	}
	pub := strings.Fields(strings.TrimPrefix(out[strings.Index(out, "(public key ")+len("(public key "):], ""))[0]
	pub = strings.TrimSuffix(pub, ")")
	// Nudge the modification time so coarse file system clocks see a change.
	future := time.Now().Add(time.Minute)
	os.Chtimes(filepath.Join(dataDir, "keys", "ring.json"), future, future)
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(base + "/_matrix/identity/v2/pubkey/isvalid?public_key=" + url.QueryEscape(pub))
		if err != nil {
			t.Fatal(err)
		}
		var r struct{ Valid bool }
		json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		if r.Valid {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the running server never picked up the rotated key")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The real binary: a bad config prints one line and exits 1; SIGTERM stops a
// serving Herald cleanly with exit status 0.
func TestMainProcess(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	child := func(args string, env ...string) *exec.Cmd {
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), append([]string{"TEST_HERALD_RUN_MAIN=1", "TEST_HERALD_ARGS=" + args}, env...)...)
		return cmd
	}

	cmd := child("--config " + writeConfig(t, "smtp:\n  hots: x\n"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("bad config: %v", err)
	}
	if got := stderr.String(); strings.Count(got, "\n") != 1 || !strings.HasPrefix(got, "herald: config: smtp.hots: unknown key") {
		t.Fatalf("bad config stderr %q", got)
	}

	dataDir := t.TempDir()
	cmd = child("serve", "HERALD_DATA_DIR="+dataDir, "HERALD_LISTEN=127.0.0.1:0", "HERALD_SERVER_NAME=herald.test", "HERALD_LOG_FORMAT=json")
	pipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := bufio.NewScanner(pipe)
	var logs []string
	addr := ""
	for addr == "" && lines.Scan() {
		logs = append(logs, lines.Text())
		var l struct{ Msg, Addr string }
		if json.Unmarshal(lines.Bytes(), &l) == nil && l.Msg == "listening" {
			addr = l.Addr
		}
	}
	if addr == "" {
		t.Fatalf("no listening line in %q", logs)
	}
	resp, err := http.Get("http://" + addr + "/_matrix/identity/v2")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for lines.Scan() {
		logs = append(logs, lines.Text())
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, strings.Join(logs, "\n"))
	}
	if !strings.Contains(strings.Join(logs, "\n"), `"msg":"stopped"`) {
		t.Errorf("no clean stop in logs:\n%s", strings.Join(logs, "\n"))
	}
	for _, l := range logs {
		if !json.Valid([]byte(l)) {
			t.Errorf("log line is not JSON: %q", l)
		}
	}
}

// Every entry of the command table answers --help (before or after its name),
// -h, `herald NAME help` and `herald help NAME` with its usage on stdout and
// exit 0, without reading the configuration (a broken one is named).
func TestEveryCommandHelp(t *testing.T) {
	t.Parallel()
	broken := writeConfig(t, "smtp:\n  hots: x\n")
	for _, c := range subcommands {
		want := commandUsage(&c)
		for _, args := range [][]string{
			{c.name, "--help"}, {"--help", c.name}, {c.name, "-h"}, {c.name, "help"}, {"help", c.name},
			{c.name, "--config", broken, "--help"},
		} {
			var out bytes.Buffer
			if err := run(context.Background(), args, []string{"HERALD_DATA_DIR=" + t.TempDir()}, &out, io.Discard); err != nil {
				t.Errorf("%v: %v", args, err)
				continue
			}
			if out.String() != want || !strings.HasPrefix(want, "usage: herald ") {
				t.Errorf("%v printed %q, want %q", args, out.String(), want)
			}
		}
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"help"}, nil, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	// `herald help` lists the table in its order.
	last := -1
	for _, c := range subcommands {
		i := strings.Index(out.String(), "\n  "+c.name+" ")
		if i < 0 || i < last {
			t.Errorf("herald help lists %q out of order:\n%s", c.name, out.String())
		}
		last = i
	}
}

// --config is accepted after the command name as well as before it.
func TestConfigFlagAfterCommand(t *testing.T) {
	t.Parallel()
	path := writeConfig(t, "server_name: flag.test\n")
	dataDir := t.TempDir()
	for _, args := range [][]string{
		{"--config", path, "keys", "list"}, {"keys", "--config", path, "list"},
		{"keys", "list", "--config", path}, {"keys", "list", "--config=" + path},
	} {
		var out bytes.Buffer
		if err := run(context.Background(), args, []string{"HERALD_DATA_DIR=" + dataDir}, &out, io.Discard); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	broken := writeConfig(t, "smtp:\n  hots: x\n")
	for _, args := range [][]string{{"serve", "--config", broken}, {"serve", "--config=" + broken}, {"--config", broken, "serve"}} {
		err := run(context.Background(), args, []string{"HERALD_DATA_DIR=" + t.TempDir()}, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "smtp.hots") {
			t.Errorf("%v: %v, want the file's error", args, err)
		}
	}
	if err := run(context.Background(), []string{"serve", "--config"}, nil, io.Discard, io.Discard); err == nil || exitCode(err) != 2 {
		t.Errorf("--config without a file: %v", err)
	}
}

// With storage.backend: postgres the keys commands, Herald stopped, work on
// the ring in the database (what every replica signs with), and adopt,
// which reconciles data_dir/keys with a bbolt file, refuses in one line.
func TestKeysCommandOnPostgres(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	env := []string{"HERALD_DATA_DIR=" + dataDir, "HERALD_SERVER_NAME=herald.test",
		"HERALD_STORAGE_BACKEND=postgres", "HERALD_STORAGE_POSTGRES_DSN=" + pgtest.DSN(t)}
	cli := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(context.Background(), append([]string{"keys"}, args...), env, &out, io.Discard)
		return out.String(), err
	}
	if out, err := cli("rotate"); err != nil || !strings.Contains(out, "new current key ed25519:") {
		t.Fatalf("rotate: %v\n%s", err, out)
	}
	out, err := cli("list")
	if m := keyLine.FindAllStringSubmatch(out, -1); err != nil || len(m) != 2 || m[0][2] != "current" {
		t.Fatalf("list after rotate: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "keys")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("data_dir/keys made on PostgreSQL: %v", err)
	}
	if _, err := cli("adopt"); err == nil || !strings.Contains(err.Error(), "not needed with storage.backend: postgres") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("adopt on PostgreSQL: %v", err)
	}
}
