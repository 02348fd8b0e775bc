package server

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/herald-im/herald/matrix"
	"github.com/herald-im/herald/store"
)

// workers tracks the background workers Start runs, for /_herald/ready and
// the herald_worker_up metric.
type workers struct {
	mu      sync.Mutex
	ctx     context.Context // Start's; nil before Start
	running map[string]bool
	failed  map[string]string // worker -> why it stopped (only unexpected stops)
}

func (w *workers) starting(ctx context.Context, names ...string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ctx, w.running, w.failed = ctx, map[string]bool{}, map[string]string{}
	for _, n := range names {
		w.running[n] = true
	}
}

// stopped records that a worker returned; err (or returning at all before
// shutdown) makes the server not ready.
func (w *workers) stopped(name string, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.running[name] = false
	if w.ctx.Err() == nil {
		why := "stopped"
		if err != nil {
			why = "stopped: " + err.Error()
		}
		w.failed[name] = why
	}
}

// problems are the reasons the workers make the server not ready.
func (w *workers) problems() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ctx == nil {
		return []string{"background workers not started"}
	}
	if w.ctx.Err() != nil {
		return []string{"shutting down"}
	}
	var out []string
	for n, why := range w.failed {
		out = append(out, n+" worker "+why)
	}
	sort.Strings(out)
	return out
}

func (w *workers) up() map[string]bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]bool, len(w.running))
	for n, r := range w.running {
		out[n] = r && (w.ctx == nil || w.ctx.Err() == nil)
	}
	return out
}

// workerCollector reports herald_worker_up{worker}.
type workerCollector struct{ a *App }

var descWorkerUp = prometheus.NewDesc("herald_worker_up", "1 while a background worker (keys, mail, onbind, lifecycle) runs, else 0.", []string{"worker"}, nil)

func (c *workerCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descWorkerUp }

func (c *workerCollector) Collect(ch chan<- prometheus.Metric) {
	for n, up := range c.a.workers.up() {
		v := 0.0
		if up {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descWorkerUp, prometheus.GaugeValue, v, n)
	}
}

// Health serves GET /_herald/health: liveness. It answers 200 whenever the
// process serves HTTP, and reads nothing.
func (a *App) Health(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
}

// Ready serves GET /_herald/ready: 200 when Herald can do its work, else 503
// M_UNKNOWN naming every reason. It checks that the database answers a read
// transaction, that data_dir/herald.db is still the file Herald has open (a
// database moved, deleted or replaced under a running server loses every
// later write at the next restart), and that the background workers run.
// It costs one read transaction and one stat, so it may be polled freely.
//
// The answer is written here rather than returned as an error, so a probe
// polling a server that is not ready does not log an error per poll: a
// change of readiness is logged once instead.
func (a *App) Ready(c echo.Context) error {
	problems := a.readiness()
	reason := strings.Join(problems, "; ")
	if old := a.notReady.Swap(&reason); old == nil || *old != reason {
		if reason == "" {
			a.log.Info("ready")
		} else {
			a.log.Warn("not ready", "reason", reason)
		}
	}
	if len(problems) > 0 {
		me := matrix.ServerUnavailable("Not ready: %s", reason).With("reasons", problems)
		c.Set(errcodeKey, me.Code)
		return c.JSON(me.Status, me.Body())
	}
	return c.JSON(http.StatusOK, map[string]string{"status": "ready"})
}

func (a *App) readiness() []string {
	if a.bdb == nil {
		return append(a.pgReadiness(), a.workers.problems()...)
	}
	var out []string
	if _, err := store.Version(a.bdb); err != nil {
		out = append(out, "database not usable: "+err.Error())
	}
	if st, err := os.Stat(filepath.Join(a.cfg.DataDir, store.FileName)); os.IsNotExist(err) {
		out = append(out, fmt.Sprintf("database file %s is missing from data_dir (moved or deleted while Herald runs): restart Herald once it is back", store.FileName))
	} else if err != nil {
		out = append(out, fmt.Sprintf("database file %s: %v", store.FileName, unwrapPath(err)))
	} else if !os.SameFile(st, a.dbFile) {
		out = append(out, fmt.Sprintf("database file %s was replaced while Herald runs: restart Herald", store.FileName))
	}
	return append(out, a.workers.problems()...)
}

func unwrapPath(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}
