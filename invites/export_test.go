package invites

import (
	"encoding/binary"
	"strconv"

	"github.com/herald-im/herald/mailer"
)

// RenderQueued is what the mail worker's Renderer does for a mail queued
// by store-invite for inv (which must be stored): for benchmarks.
func (s *Service) RenderQueued(inv *Invite) (mailer.Message, error) {
	data := binary.BigEndian.AppendUint32(nil, s.mailVersion(s.mail.forInvite(inv)))
	return s.renderQueued("invite:"+strconv.FormatUint(inv.ID, 10), data)
}
