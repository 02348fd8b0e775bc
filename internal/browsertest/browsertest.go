// Package browsertest starts headless Chromium for the admin console's
// browser tests: admin/ drives the pages against fakes, e2e/ against the real
// stack. Both use the same browser flags, artifacts directory and screenshots.
package browsertest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Path finds Debian's chromium (or $CHROMIUM_PATH, a test knob outside the
// HERALD_ configuration prefix); a missing browser fails
// the test (.ci/run installs it with apt-get install -y chromium).
func Path(t testing.TB) string {
	t.Helper()
	for _, p := range []string{os.Getenv("CHROMIUM_PATH"), "/usr/bin/chromium"} {
		if p != "" {
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	t.Fatal("chromium not found at /usr/bin/chromium: .ci/run installs it (apt-get install -y chromium), or set CHROMIUM_PATH")
	return ""
}

// New starts headless Chromium in a 1280x900 window with a fresh profile;
// everything it does must finish within timeout (waits are for elements,
// never fixed sleeps). The browser is closed when the test ends.
func New(t testing.TB, timeout time.Duration) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(Path(t)),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("force-color-profile", "srgb"),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(acancel)
	bctx, bcancel := chromedp.NewContext(actx)
	t.Cleanup(bcancel)
	return bctx
}

// Artifacts returns test-artifacts/<name> at the repository root (gitignored),
// creating it. Tests run in their package's directory, one level below the root.
func Artifacts(t testing.TB, name string) string {
	t.Helper()
	dir := filepath.Join("..", "test-artifacts", name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Screenshot writes a full-page PNG of the browser's page to path.
func Screenshot(ctx context.Context, path string) error {
	buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		return err
	}
	return os.WriteFile(path, buf, 0o644)
}

// Must runs steps; on failure it saves dir/failure.png and fails the test
// saying what was being done.
func Must(t testing.TB, ctx context.Context, dir, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, steps...); err != nil {
		_ = Screenshot(ctx, filepath.Join(dir, "failure.png"))
		t.Fatalf("%s: %v", what, err)
	}
}

// Text returns the text of the first element matching the CSS selector sel.
func Text(t testing.TB, ctx context.Context, sel string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		t.Fatalf("text of %s: %v", sel, err)
	}
	return s
}

// Location returns the page's URL without the prefix base.
func Location(t testing.TB, ctx context.Context, base string) string {
	t.Helper()
	u, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(u, base)
}
