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
