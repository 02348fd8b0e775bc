package invites_test

import (
	"testing"

	"github.com/herald-im/herald/mailer"
)

// BenchmarkRenderInviteMail: what the mail worker does for each invite email
// at send time, rendering the templates from the invite record and composing
// the message; ns/op and allocations per mail.
func BenchmarkRenderInviteMail(b *testing.B) {
	e := start(b)
	inv := goldenInvite()
	b.ReportAllocs()
	for b.Loop() {
		m, err := e.App.Invites().RenderMail(inv)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := mailer.Compose(m, "Herald <herald@id.example.org>", goldenDate, "<bench@id.example.org>"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRenderQueuedInviteMail: as BenchmarkRenderInviteMail, through
// the outbox's Renderer for a stored invite (reading the invite, checking
// the templates' version) as the mail worker calls it.
func BenchmarkRenderQueuedInviteMail(b *testing.B) {
	e := start(b)
	tok := e.register(b, "@alice:hs.test")
	a := e.storeInvite(b, tok, inviteBody("@alice:hs.test", "bench@example.org"))
	inv, err := e.App.Invites().ByToken(a.Token)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		m, err := e.App.Invites().RenderQueued(inv)
		if err != nil {
			b.Fatal(err)
		}
		m.To = inv.Address
		if _, err := mailer.Compose(m, "Herald <herald@id.example.org>", goldenDate, "<bench@id.example.org>"); err != nil {
			b.Fatal(err)
		}
	}
}
