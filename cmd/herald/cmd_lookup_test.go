package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/matrix"
	"github.com/herald-im/herald/store"
)

// `herald lookup rotate-pepper` rotates the stored pepper on demand and
// rebuilds the hash index for it.
func TestLookupRotatePepperCommand(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.SMTP.Host = ""
	open := func() *server.App {
		t.Helper()
		a, err := server.New(&cfg, slog.New(slog.DiscardHandler), server.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	a := open()
	id := a.Identity()
	if err := id.DB().Update(func(tx *store.Tx) error {
		return id.PutBinding(tx, identity.Binding{Medium: "email", Address: "carol@example.org", MXID: "@carol:hs.test"})
	}); err != nil {
		t.Fatal(err)
	}
	p1, _, err := id.Pepper()
	if err != nil {
		t.Fatal(err)
	}

	env := []string{"HERALD_DATA_DIR=" + dir, "HERALD_SMTP_HOST="}
	lookupCmd := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(context.Background(), append([]string{"lookup"}, args...), env, &out, io.Discard)
		return out.String(), err
	}
	// While the database is open (Herald running), the command refuses.
	if _, err := lookupCmd("rotate-pepper"); !errors.Is(err, store.ErrLocked) || !strings.Contains(err.Error(), "stop Herald first") {
		t.Fatalf("rotate-pepper on an open database: %v", err)
	}
	a.Close()

	out, err := lookupCmd("rotate-pepper")
	if err != nil || !strings.Contains(out, "lookup pepper rotated") {
		t.Fatalf("rotate-pepper: %q %v", out, err)
	}
	for _, args := range [][]string{{}, {"rotate-pepper", "x"}, {"frobnicate"}} {
		if _, err := lookupCmd(args...); err == nil {
			t.Errorf("lookup %v: no usage error", args)
		}
	}
	if out, err := lookupCmd("help"); err != nil || !strings.Contains(out, "rotate-pepper") {
		t.Errorf("help: %q %v", out, err)
	}

	a = open()
	defer a.Close()
	id = a.Identity()
	p2, _, err := id.Pepper()
	if err != nil || p2 == p1 || len(p2) < 24 {
		t.Fatalf("pepper after rotate-pepper: %q (was %q) %v", p2, p1, err)
	}
	m, err := id.LookupHashed("sha256", p2, []string{identity.LookupHash("carol@example.org", "email", p2)})
	if err != nil || m[identity.LookupHash("carol@example.org", "email", p2)] != "@carol:hs.test" {
		t.Errorf("index not rebuilt for the new pepper: %v %v", m, err)
	}
	var me *matrix.Error
	if _, err := id.LookupHashed("sha256", p1, nil); !errors.As(err, &me) || me.Code != "M_INVALID_PEPPER" {
		t.Errorf("old pepper still accepted: %v", err)
	}
}
