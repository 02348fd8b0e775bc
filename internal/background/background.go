// Package background keeps Herald's background work (mail and onbind
// workers, the invite expiry sweep, key reloads) from taking the server
// down: a panic in one is logged, counted and the work restarted after a
// pause, while the server keeps answering.
package background

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync/atomic"
	"time"
)

var panics atomic.Uint64

// Panics is how many panics in background work have been recovered since
// the process started (for metrics: a non-zero value means something is
// broken, often a damaged database; see `herald check`).
func Panics() uint64 { return panics.Load() }

// Default pauses before restarting work that panicked: the first, and the
// cap it doubles up to while the work keeps panicking.
const (
	DefaultRestartDelay    = time.Second
	DefaultMaxRestartDelay = time.Minute
)

// Runner runs background work, restarting it after a panic. Its zero
// fields take the defaults; tests set short delays on their own Runner.
type Runner struct {
	Log             *slog.Logger
	RestartDelay    time.Duration // first pause after a panic (DefaultRestartDelay)
	MaxRestartDelay time.Duration // cap of the doubling pause (DefaultMaxRestartDelay)
}

// Run runs fn with the default delays (see Runner.Run).
func Run(ctx context.Context, log *slog.Logger, name string, fn func(context.Context) error) {
	Runner{Log: log}.Run(ctx, name, fn)
}

// Run runs fn until it returns or ctx is done. If fn panics, Run logs the
// panic (value and stack), counts it, waits (RestartDelay, doubling while
// it keeps panicking up to MaxRestartDelay) and runs fn again. An error fn
// returns is logged.
func (r Runner) Run(ctx context.Context, name string, fn func(context.Context) error) {
	log := r.Log
	if log == nil {
		log = slog.Default()
	}
	first, maxDelay := r.RestartDelay, r.MaxRestartDelay
	if first <= 0 {
		first = DefaultRestartDelay
	}
	if maxDelay <= 0 {
		maxDelay = DefaultMaxRestartDelay
	}
	delay := first
	for {
		started := time.Now()
		err, panicked := call(log, name, func() error { return fn(ctx) })
		if !panicked {
			if err != nil && ctx.Err() == nil {
				log.Error(name+" stopped", "err", err)
			}
			return
		}
		if time.Since(started) > maxDelay {
			delay = first // it ran a good while: not a tight loop
		}
		log.Warn(name+" restarts after a panic", "in", delay.String())
		if !Sleep(ctx, delay) {
			return
		}
		delay = min(2*delay, maxDelay)
	}
}

// Sleep waits d, or until ctx is done; it reports whether the whole wait
// passed (false: ctx is done).
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Every runs fn every interval, the first time one interval from now, until
// ctx is done. fn runs on the caller's goroutine, so runs never overlap.
func Every(ctx context.Context, every time.Duration, fn func()) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

func call(log *slog.Logger, name string, fn func() error) (err error, panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			panicked = true
			report(log, name, r)
		}
	}()
	// bbolt reads the database through mmap: a damaged page can fault
	// rather than panic. Make faults recoverable panics here too.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	return fn(), false
}

// Recover, deferred at the top of a goroutine, logs and counts a panic in
// it instead of letting it end the process.
func Recover(log *slog.Logger, name string) {
	if r := recover(); r != nil {
		report(log, name, r)
	}
}

func report(log *slog.Logger, name string, r any) {
	panics.Add(1)
	log.Error("panic in "+name+" (recovered; the server keeps serving)", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
}
