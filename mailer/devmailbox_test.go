package mailer_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herald-im/herald/mailer"
)

func TestDevMailbox(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mailbox")
	d, err := mailer.NewDevMailbox(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := mailer.Message{To: "alice@example.org", Subject: "<b>Hi</b> & welcome",
		Text: "Join <script>alert(1)</script>", HTML: `<p onclick="x()">Hello <script>alert(2)</script></p>`}
	raw, err := mailer.Compose(m, from, fixedDate, "<d@x>")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Send(context.Background(), "herald@id.example.org", []string{m.To}, raw); err != nil {
		t.Fatal(err)
	}
	raw2 := testRaw(t, "bob@example.org", "second")
	if err := d.Send(context.Background(), "herald@id.example.org", []string{"bob@example.org"}, raw2); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.eml"))
	if len(files) != 2 {
		t.Fatalf("%d .eml files: %v", len(files), files)
	}
	list, err := d.List()
	if err != nil || len(list) != 2 {
		t.Fatalf("List = %+v, %v", list, err)
	}
	if list[0].Subject != "second" || list[1].Subject != "<b>Hi</b> & welcome" || list[1].To != "<alice@example.org>" {
		t.Errorf("list (newest first) = %+v", list)
	}
	got, err := d.Read(list[1].Name)
	if err != nil || string(got) != string(raw) {
		t.Fatalf("Read = %v", err)
	}
	for _, bad := range []string{"../herald.db", "x.txt", ".tmp-1.eml", "a/b.eml", "missing.eml"} {
		if _, err := d.Read(bad); err != mailer.ErrNoSuchFile {
			t.Errorf("Read(%q) = %v", bad, err)
		}
	}
	os.WriteFile(filepath.Join(filepath.Dir(dir), "secret.eml"), []byte("x"), 0o600)
	if _, err := d.Read("../secret.eml"); err == nil {
		t.Error("Read escaped the mailbox directory")
	}
}

func TestDevMailboxAsQueueSender(t *testing.T) {
	dir := t.TempDir()
	d, err := mailer.NewDevMailbox(filepath.Join(dir, "mailbox"))
	if err != nil {
		t.Fatal(err)
	}
	db := openDB(t, dir)
	defer closeDB(t, db)
	q, err := mailer.Open(db, mailer.Options{Sender: d, From: from}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, db: db, q: q}
	// The queued bytes are read before the worker runs: a sent mail keeps
	// its timeline, not its body.
	id := e.enqueue(msg("a@example.org", "dev"))
	queued, err := q.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	e.run()
	got := e.waitState(id, mailer.Sent)
	got.Raw = queued.Raw
	list, _ := d.List()
	if len(list) != 1 || list[0].Subject != "dev" {
		t.Fatalf("list = %+v", list)
	}
	if r := got.Attempts[0].Reply; !strings.Contains(r, list[0].Name) {
		t.Errorf("attempt reply %q does not name the file", r)
	}
	raw, _ := d.Read(list[0].Name)
	if string(raw) != string(got.Raw) {
		t.Error("mailbox file differs from the queued bytes")
	}
}

// The dev mailbox keeps at most DevMailboxMax mails (the newest): mail that
// requests cause must not fill the disk.
func TestDevMailboxKeepsTheNewest(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mailbox")
	d, err := mailer.NewDevMailbox(dir)
	if err != nil {
		t.Fatal(err)
	}
	raw := testRaw(t, "bob@example.org", "flood")
	total := mailer.DevMailboxMax + mailer.DevMailboxMax/10 + 1
	var last string
	for i := 0; i < total; i++ {
		if last, err = d.SendReply(context.Background(), "herald@id.example.org", []string{"bob@example.org"}, raw); err != nil {
			t.Fatal(err)
		}
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.eml"))
	if len(files) != mailer.DevMailboxMax {
		t.Fatalf("%d .eml files after %d mails, want %d", len(files), total, mailer.DevMailboxMax)
	}
	if _, err := os.Stat(filepath.Join(dir, strings.TrimPrefix(last, "saved in the dev mailbox as "))); err != nil {
		t.Fatalf("the newest mail was deleted: %v", err)
	}
}
