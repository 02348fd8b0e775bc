package background

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRunRecoversCountsAndRestarts(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	before := Panics()
	calls := 0
	Runner{Log: log, RestartDelay: time.Millisecond}.Run(context.Background(), "test task", func(context.Context) error {
		calls++
		if calls <= 2 {
			panic("page 7: invalid page type")
		}
		return errors.New("done for good")
	})
	if calls != 3 || Panics()-before != 2 {
		t.Fatalf("calls %d, panics %d; want 3 calls and 2 recovered panics", calls, Panics()-before)
	}
	out := logs.String()
	if !strings.Contains(out, "panic in test task (recovered") || !strings.Contains(out, "invalid page type") || !strings.Contains(out, "test task stopped") {
		t.Fatalf("logs:\n%s", out)
	}
}

func TestRunStopsWaitingWhenCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Runner{Log: slog.New(slog.DiscardHandler), RestartDelay: time.Hour}.Run(ctx, "test task", func(context.Context) error { panic("boom") })
	}()
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run kept waiting to restart after ctx was cancelled")
	}
}

func TestRecoverInAGoroutine(t *testing.T) {
	before := Panics()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer Recover(slog.New(slog.DiscardHandler), "test goroutine")
		panic("boom")
	}()
	wg.Wait()
	if Panics()-before != 1 {
		t.Fatalf("recovered %d panics, want 1", Panics()-before)
	}
}

// Every runs its function on each tick and returns when ctx is done.
func TestEveryRunsUntilCancelled(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	runs := make(chan struct{}, 1)
	done := make(chan struct{})
	n := 0
	go func() {
		defer close(done)
		Every(ctx, time.Millisecond, func() {
			n++
			if n == 3 {
				runs <- struct{}{}
			}
		})
	}()
	select {
	case <-runs:
	case <-time.After(10 * time.Second):
		t.Fatal("Every did not run three times")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Every kept running after ctx was cancelled")
	}
}
