package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/herald-im/herald/config"
)

const healthcheckUsage = `usage: herald healthcheck [--live] [--url URL] [--timeout 5s]

Asks the running Herald whether it is ready (GET /_herald/ready), or with
--live only whether it serves (GET /_herald/health), and exits 0 if so,
1 otherwise with the reason on standard error. For container HEALTHCHECKs in
images without curl:

  HEALTHCHECK CMD ["herald", "healthcheck"]

The URL is derived from listen (0.0.0.0 and :: become loopback; https when
Herald serves TLS, whose certificate is then not checked: the check sends
nothing secret and reads only the status); --url overrides it.`

// healthcheckCommand asks a running Herald for its health and turns the
// answer into an exit status.
func healthcheckCommand(ctx context.Context, cfg *config.Config, _ *slog.Logger, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	live := fs.Bool("live", false, "check liveness (/_herald/health) instead of readiness")
	base := fs.String("url", "", "Herald's base URL (default: from listen)")
	timeout := fs.Duration("timeout", 5*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		if len(args) > 0 && (args[0] == "help" || args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintln(stdout, healthcheckUsage)
			return nil
		}
		return usageError(healthcheckUsage)
	}
	u := *base
	if u == "" {
		u = localURL(cfg)
	}
	path := "/_herald/ready"
	if *live {
		path = "/_herald/health"
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(u, "/")+path, nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	client := &http.Client{
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, Proxy: nil},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode == http.StatusOK {
		fmt.Fprintln(stdout, "ok")
		return nil
	}
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(raw, &e) == nil && e.Error != "" {
		return fmt.Errorf("healthcheck: %d: %s", resp.StatusCode, e.Error)
	}
	return fmt.Errorf("healthcheck: %s", resp.Status)
}

// localURL is the URL of Herald's main listener as seen from the same host.
func localURL(cfg *config.Config) string {
	scheme := "http"
	if cfg.TLS.Enabled() {
		scheme = "https"
	}
	host, port, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return scheme + "://" + cfg.Listen
	}
	switch ip := net.ParseIP(host); {
	case host == "" || (ip != nil && ip.IsUnspecified() && ip.To4() != nil):
		host = "127.0.0.1"
	case ip != nil && ip.IsUnspecified():
		host = "::1"
	}
	return scheme + "://" + net.JoinHostPort(host, port)
}
