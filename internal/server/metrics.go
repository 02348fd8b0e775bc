package server

import (
	"context"
	"errors"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are one App's Prometheus metrics, in a registry of its own (tests
// run several Apps in one process). Labels come from fixed sets or route
// templates, never from a request (no address, token, room or user ID).
type metrics struct {
	reg *prometheus.Registry

	requests   *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	storeInv   *prometheus.CounterVec
	mailSends  *prometheus.CounterVec
	onbind     *prometheus.CounterVec
	lookups    *prometheus.CounterVec
	lookupHits *prometheus.CounterVec
	panics     *prometheus.CounterVec

	// series caches each (route, method, status) request counter and each
	// (route, method) latency observer: WithLabelValues hashes the labels
	// and takes a lock on every call, once per request otherwise. Routes
	// are templates and methods and statuses fixed sets, so it stays small.
	series sync.Map // requestSeries -> *requestObservers
}

type requestSeries struct {
	route, method string
	status        int
}

type requestObservers struct {
	count   prometheus.Counter
	latency prometheus.Observer
}

func newMetrics(a *App) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_http_requests_total",
		Help: "HTTP requests answered, by route template (\"unmatched\" for unknown paths), method and status.",
	}, []string{"route", "method", "status"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "herald_http_request_duration_seconds",
		Help:    "Time to answer HTTP requests, by route template and method.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"route", "method"})
	m.storeInv = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_store_invite_total",
		Help: "store-invite requests by outcome (stored, deduplicated, refused) and, for refusals, reason.",
	}, []string{"outcome", "reason"})
	m.mailSends = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_mail_sends_total",
		Help: "Mail send attempts by result (sent, deferred, failed) and SMTP reply class (2xx, 4xx, 5xx, none).",
	}, []string{"result", "reply_class"})
	m.onbind = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_onbind_attempts_total",
		Help: "onbind delivery attempts by result (delivered, retry, refused, gave_up).",
	}, []string{"result"})
	m.lookups = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_lookup_addresses_total",
		Help: "Addresses asked about in lookups, by API (v2, v1, v1_bulk).",
	}, []string{"api"})
	m.lookupHits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_lookup_matches_total",
		Help: "Addresses found bound in lookups, by API (v2, v1, v1_bulk).",
	}, []string{"api"})
	m.panics = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_background_panics_total",
		Help: "Panics recovered in background tasks, by task.",
	}, []string{"task"})
	// Every fixed label value starts at 0, so rate() and alerts see a series
	// before the first event.
	for _, o := range [][2]string{{"stored", ""}, {"deduplicated", ""}, {"refused", "rate_limited"}, {"refused", "policy"},
		{"refused", "already_bound"}, {"refused", "invalid"}, {"refused", "unauthorized"}, {"refused", "unsupported_medium"}, {"refused", "error"}} {
		m.storeInv.WithLabelValues(o[0], o[1])
	}
	for _, r := range []string{"sent", "deferred", "failed"} {
		m.mailSends.WithLabelValues(r, "none")
	}
	for _, r := range []string{"delivered", "retry", "refused", "gave_up"} {
		m.onbind.WithLabelValues(r)
	}
	for _, task := range []string{"keys", "mail", "onbind", "lifecycle"} {
		m.panics.WithLabelValues(task)
	}
	for _, api := range []string{"v2", "v1", "v1_bulk"} {
		m.lookups.WithLabelValues(api)
		m.lookupHits.WithLabelValues(api)
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "herald_build_info", Help: "Always 1: the running Herald's version and Go version.",
	}, []string{"version", "goversion"})
	build.WithLabelValues(a.version, runtime.Version()).Set(1)
	m.reg.MustRegister(m.requests, m.latency, m.storeInv, m.mailSends, m.onbind, m.lookups, m.lookupHits, m.panics, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&storeCollector{a: a}, &workerCollector{a: a})
	return m
}

// BackgroundPanic counts a panic recovered in a background task (task is a
// fixed name such as "mail" or "lifecycle", never data). It is the hook for
// whatever recovers background panics.
func (a *App) BackgroundPanic(task string) { a.metrics.panics.WithLabelValues(task).Inc() }

// Metrics is the handler for GET /metrics (served on metrics.listen).
func (a *App) Metrics() http.Handler {
	return promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{ErrorLog: metricsErrorLog{a}, Timeout: 10 * time.Second})
}

type metricsErrorLog struct{ a *App }

func (l metricsErrorLog) Println(v ...any) { l.a.log.Error("serving metrics", "err", v) }

// observeRequest counts one answered request.
func (m *metrics) observeRequest(route, method string, status int, d time.Duration) {
	method = methodLabel(method)
	key := requestSeries{route, method, status}
	o, ok := m.series.Load(key)
	if !ok {
		o, _ = m.series.LoadOrStore(key, &requestObservers{
			count:   m.requests.WithLabelValues(route, method, statusLabel(status)),
			latency: m.latency.WithLabelValues(route, method),
		})
	}
	ob := o.(*requestObservers)
	ob.count.Inc()
	ob.latency.Observe(d.Seconds())
}

// statusLabels are the status codes as label values, made once so that
// counting a request does not allocate one.
var statusLabels = func() (l [600]string) {
	for i := 100; i < len(l); i++ {
		l[i] = strconv.Itoa(i)
	}
	return l
}()

func statusLabel(status int) string {
	if status >= 100 && status < len(statusLabels) {
		return statusLabels[status]
	}
	return strconv.Itoa(status)
}

// methodLabel keeps the method label to the standard methods: anything else
// a client sends is "OTHER".
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions:
		return m
	}
	return "OTHER"
}

// storeCollector reports the stored-data gauges (queue depths and oldest
// ages, bindings, pending invites, database size), read at most once per
// Intervals.Stats however often /metrics is scraped (see storeStats).
type storeCollector struct {
	a *App

	mu      sync.Mutex
	at      time.Time
	cached  []prometheus.Metric
	lastErr error
}

var (
	descMailDepth     = prometheus.NewDesc("herald_mail_queue_depth", "Mail waiting to be sent (pending).", nil, nil)
	descMailOldest    = prometheus.NewDesc("herald_mail_queue_oldest_age_seconds", "How long the first-queued pending mail has waited (0: none pending).", nil, nil)
	descOnbindDepth   = prometheus.NewDesc("herald_onbind_queue_depth", "onbind deliveries waiting (pending).", nil, nil)
	descOnbindOldest  = prometheus.NewDesc("herald_onbind_queue_oldest_age_seconds", "How long the first-queued pending onbind delivery has waited (0: none pending).", nil, nil)
	descBindings      = prometheus.NewDesc("herald_bindings", "Addresses bound to a Matrix ID.", nil, nil)
	descPending       = prometheus.NewDesc("herald_invites_pending", "Invites stored and not yet resolved, expired, revoked or declined.", nil, nil)
	descDBSize        = prometheus.NewDesc("herald_db_size_bytes", "Size of the bbolt file (data_dir/herald.db), or of the PostgreSQL database.", nil, nil)
	descStatsDuration = prometheus.NewDesc("herald_stats_read_seconds", "Time the last read of the stored-data gauges took.", nil, nil)
	descStatsUp       = prometheus.NewDesc("herald_stats_up", "1 if the last read of the stored-data gauges succeeded, else 0 (the other gauges are then missing).", nil, nil)

	descDBWrite     = prometheus.NewDesc("herald_db_write_seconds_total", "Time bbolt write transactions spent writing and syncing pages at commit.", nil, nil)
	descDBSpill     = prometheus.NewDesc("herald_db_spill_seconds_total", "Time bbolt write transactions spent spilling (splitting and allocating) nodes at commit.", nil, nil)
	descDBRebalance = prometheus.NewDesc("herald_db_rebalance_seconds_total", "Time bbolt write transactions spent rebalancing nodes at commit.", nil, nil)
	descDBWrites    = prometheus.NewDesc("herald_db_page_writes_total", "Writes bbolt performed at commit.", nil, nil)
	descDBReadTx    = prometheus.NewDesc("herald_db_read_transactions_total", "Read transactions started.", nil, nil)
	descDBOpenTx    = prometheus.NewDesc("herald_db_open_read_transactions", "Read transactions open now.", nil, nil)
	descDBFree      = prometheus.NewDesc("herald_db_free_pages", "Pages free (or pending free) inside the bbolt file.", nil, nil)
)

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMailDepth, descMailOldest, descOnbindDepth, descOnbindOldest, descBindings,
		descPending, descDBSize, descStatsDuration, descStatsUp, descDBWrite, descDBSpill, descDBRebalance, descDBWrites,
		descDBReadTx, descDBOpenTx, descDBFree, descReplica, descPoolConns, descPoolAcquires, descPoolWait} {
		ch <- d
	}
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	c.a.collectReplica(ch)
	if c.a.bdb != nil {
		c.collectBolt(ch)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := time.Now(); c.cached == nil || now.Sub(c.at) >= c.a.intervals.Stats {
		c.cached, c.lastErr = c.a.storeStats()
		c.at = now
		if c.lastErr != nil {
			c.a.log.Error("reading stored-data gauges for metrics", "err", c.lastErr)
		}
	}
	for _, m := range c.cached {
		ch <- m
	}
}

// collectBolt reports bbolt's own counters, which are in memory: read on
// every scrape.
func (c *storeCollector) collectBolt(ch chan<- prometheus.Metric) {
	st := c.a.bdb.Stats()
	ch <- prometheus.MustNewConstMetric(descDBWrite, prometheus.CounterValue, st.TxStats.GetWriteTime().Seconds())
	ch <- prometheus.MustNewConstMetric(descDBSpill, prometheus.CounterValue, st.TxStats.GetSpillTime().Seconds())
	ch <- prometheus.MustNewConstMetric(descDBRebalance, prometheus.CounterValue, st.TxStats.GetRebalanceTime().Seconds())
	ch <- prometheus.MustNewConstMetric(descDBWrites, prometheus.CounterValue, float64(st.TxStats.GetWrite()))
	ch <- prometheus.MustNewConstMetric(descDBReadTx, prometheus.CounterValue, float64(st.TxN))
	ch <- prometheus.MustNewConstMetric(descDBOpenTx, prometheus.GaugeValue, float64(st.OpenTxN))
	ch <- prometheus.MustNewConstMetric(descDBFree, prometheus.GaugeValue, float64(st.FreePageN+st.PendingPageN))
}

// storeStats reads the stored-data gauges. Each read is bounded by what is
// pending or bound, never by history: queue depths and pending invites walk
// only the pending keys of their state index (no values), the oldest age
// reads one record, the bindings count reads bbolt's per-page key counts.
func (a *App) storeStats() ([]prometheus.Metric, error) {
	start, now := time.Now(), a.now()
	up := func(v float64, d time.Duration) []prometheus.Metric {
		return []prometheus.Metric{
			prometheus.MustNewConstMetric(descStatsUp, prometheus.GaugeValue, v),
			prometheus.MustNewConstMetric(descStatsDuration, prometheus.GaugeValue, d.Seconds()),
		}
	}
	age := func(t time.Time) float64 {
		if t.IsZero() {
			return 0
		}
		return max(0, now.Sub(t).Seconds())
	}
	mailN, mailOldest, err := a.mail.Backlog()
	if err != nil {
		return up(0, time.Since(start)), err
	}
	obN, obOldest, err := a.onbind.Backlog()
	if err != nil {
		return up(0, time.Since(start)), err
	}
	bindings, err := a.identity.BindingCount()
	if err != nil {
		return up(0, time.Since(start)), err
	}
	pending, err := a.invites.PendingCount()
	if err != nil {
		return up(0, time.Since(start)), err
	}
	size, err := a.dbSize()
	if err != nil {
		return up(0, time.Since(start)), err
	}
	return append(up(1, time.Since(start)),
		prometheus.MustNewConstMetric(descMailDepth, prometheus.GaugeValue, float64(mailN)),
		prometheus.MustNewConstMetric(descMailOldest, prometheus.GaugeValue, age(mailOldest)),
		prometheus.MustNewConstMetric(descOnbindDepth, prometheus.GaugeValue, float64(obN)),
		prometheus.MustNewConstMetric(descOnbindOldest, prometheus.GaugeValue, age(obOldest)),
		prometheus.MustNewConstMetric(descBindings, prometheus.GaugeValue, float64(bindings)),
		prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(pending)),
		prometheus.MustNewConstMetric(descDBSize, prometheus.GaugeValue, float64(size)),
	), nil
}

// serveMetrics serves /metrics on metrics.listen; the returned channel
// carries a serving error and stop shuts the listener down, returning when
// its requests have ended. With metrics.listen empty it does nothing.
func (a *App) serveMetrics() (<-chan error, func(context.Context), error) {
	errc := make(chan error, 1)
	if a.cfg.Metrics.Listen == "" {
		return errc, func(context.Context) {}, nil
	}
	ln, err := net.Listen("tcp", a.cfg.Metrics.Listen)
	if err != nil {
		return nil, nil, errors.New("metrics.listen: " + err.Error())
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", a.Metrics())
	srv := a.httpServer(mux, nil, 30*time.Second)
	a.log.Info("metrics listening", "addr", ln.Addr().String())
	if a.metricsListening != nil {
		a.metricsListening(ln.Addr())
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	return errc, func(ctx context.Context) { shutdown(ctx, a.log, "metrics", srv) }, nil
}
