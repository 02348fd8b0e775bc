package server

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/upstream"
)

// wireUpstream turns on the upstream lookup at store-invite when
// lookup.upstream names identity servers (docs/upstream.md), and counts its
// calls, hits and failures per upstream (labelled by the upstream's host, a
// value from the configuration).
func (a *App) wireUpstream() error {
	calls := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_upstream_lookups_total",
		Help: "Questions to upstream identity servers at store-invite, by upstream (host of its base_url).",
	}, []string{"upstream"})
	hits := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_upstream_hits_total",
		Help: "Upstream answers that vouched (verified) for the invitee, by upstream.",
	}, []string{"upstream"})
	failures := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_upstream_failures_total",
		Help: "Upstream questions that failed, by upstream and reason (unreachable, timeout, terms_not_signed, bad_signature, no_usable_hash, refused, error).",
	}, []string{"upstream", "reason"})
	a.metrics.reg.MustRegister(calls, hits, failures)
	if len(a.cfg.Lookup.Upstream) == 0 {
		return nil
	}
	a.upstream = upstream.New(upstream.Options{
		Servers: a.cfg.Lookup.Upstream, Timeout: a.cfg.Lookup.UpstreamTimeout.D(), UserAgent: "Herald/" + a.version,
		Log: a.log, Now: a.now,
		OnLookup: func(name, result, reason string) {
			calls.WithLabelValues(name).Inc()
			switch result {
			case "hit":
				hits.WithLabelValues(name).Inc()
			case "failure":
				failures.WithLabelValues(name, reason).Inc()
			}
		},
	})
	for _, name := range a.upstream.Names() {
		calls.WithLabelValues(name)
		hits.WithLabelValues(name)
		for _, r := range []string{upstream.ReasonUnreachable, upstream.ReasonTimeout, upstream.ReasonTermsNotSigned,
			upstream.ReasonBadSignature, upstream.ReasonNoHash, upstream.ReasonRefused, upstream.ReasonError} {
			failures.WithLabelValues(name, r)
		}
	}
	return a.invites.UseUpstream(a.onbind, invites.UpstreamOptions{
		Email: a.cfg.Lookup.UpstreamEmail,
		Lookup: func(ctx context.Context, address string) (string, string, bool) {
			ans, ok := a.upstream.Lookup(ctx, address)
			return ans.MXID, ans.Upstream, ok
		},
	})
}

// Upstream is the upstream lookup (nil when lookup.upstream is empty).
func (a *App) Upstream() *upstream.Service { return a.upstream }
