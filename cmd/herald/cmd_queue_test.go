package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/store"
)

// herald queue on a stopped server: stats, list, a bulk retry refused as a
// whole when one id is unknown, drop.
func TestQueueCommand(t *testing.T) {
	dir := t.TempDir()
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.SMTP.Host = "" // dev mailbox; the worker is not started, so mail stays pending
	a, err := server.New(&cfg, slog.New(slog.DiscardHandler), server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, to := range []string{"zoe@example.org", "yan@example.org"} {
		err := a.DB().Update(func(tx *store.Tx) error {
			_, err := a.Mailer().Enqueue(tx, mailer.Message{To: to, Subject: "hello", Text: "hi", Kind: "invite"})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	a.Close()

	env := []string{"HERALD_DATA_DIR=" + dir}
	queueCmd := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(context.Background(), append([]string{"queue"}, args...), env, &out, io.Discard)
		return out.String(), err
	}
	out, err := queueCmd("stats")
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	if f := strings.Fields(strings.Split(out, "\n")[1]); len(f) < 4 || f[0] != "outbox" || f[1] != "2" || f[2] != "0" {
		t.Fatalf("stats outbox row: %q", out)
	}
	out, err = queueCmd("list", "outbox", "--state", "pending")
	if err != nil || !strings.Contains(out, "z...@e...") || strings.Contains(out, "zoe@example.org") || strings.Count(out, "pending") != 2 {
		t.Fatalf("list: %q %v", out, err)
	}
	if _, err := queueCmd("drop", "outbox", "1", "99"); err == nil || !strings.Contains(err.Error(), "no such mail: 99; nothing changed") {
		t.Fatalf("drop with an unknown id: %v", err)
	}
	if out, err := queueCmd("drop", "outbox", "1"); err != nil || !strings.Contains(out, "outbox 1: dropped") {
		t.Fatalf("drop: %q %v", out, err)
	}
	if out, err := queueCmd("list", "outbox"); err != nil || strings.Count(out, "pending") != 1 {
		t.Fatalf("list after drop: %q %v", out, err)
	}
	if out, err := queueCmd("retry", "outbox", "2"); err != nil || !strings.Contains(out, "outbox 2: due now") {
		t.Fatalf("retry: %q %v", out, err)
	}
	if out, err := queueCmd("list", "onbind"); err != nil || !strings.Contains(out, "HOMESERVER") {
		t.Fatalf("list onbind: %q %v", out, err)
	}
	for _, args := range [][]string{{}, {"list"}, {"list", "mail"}, {"retry", "outbox"}, {"drop", "onbind", "x"}, {"list", "outbox", "--state", "delivered"}, {"stats", "x"}} {
		if _, err := queueCmd(args...); err == nil {
			t.Errorf("queue %v: no usage error", args)
		}
	}
}
