package invites

import (
	"crypto/ed25519"
	"strings"

	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/matrix"
	"github.com/herald-im/herald/store"
)

// ViaSydent marks an invite imported from a sydent deployment (Invite.Via).
const ViaSydent = "sydent"

// SydentEphemeralRef is the ref prefix of ephemeral keys imported from
// sydent: sydent records no link between an ephemeral key and its invite.
const SydentEphemeralRef = "sydent:"

// signingServer is the server name to sign for inv under.
func (inv *Invite) signingServer(serverName string) string {
	if inv.SignAs != "" {
		return inv.SignAs
	}
	return serverName
}

// checkEphemeral checks that priv is the ephemeral key of inv. An invite
// imported from sydent has no recorded ephemeral key (sydent's database does
// not link them): there any still-valid ephemeral key imported from sydent
// is accepted, as sydent itself signed with whatever key it was given; the
// key only counts at a homeserver whose invite event carries it.
func (s *Service) checkEphemeral(inv *Invite, priv ed25519.PrivateKey) error {
	pub := priv.Public().(ed25519.PublicKey)
	if inv.EphemeralPublic != "" {
		if got, err := keys.DecodeBase64(inv.EphemeralPublic); err == nil && pub.Equal(ed25519.PublicKey(got)) {
			return nil
		}
		return matrix.Forbidden("private_key is not this invite's key")
	}
	if inv.Via != ViaSydent {
		return matrix.Forbidden("private_key is not this invite's key")
	}
	var ok bool
	var ref string
	err := s.db.View(func(tx *store.Tx) error {
		var err error
		ref, ok, err = s.opts.Ephemeral.EphemeralRef(tx, keys.EncodeBase64(pub))
		return err
	})
	if err != nil {
		return err
	}
	if !ok || !strings.HasPrefix(ref, SydentEphemeralRef) {
		return matrix.Forbidden("private_key is not a key of an imported invite")
	}
	return nil
}

// ImportPending stores inv, an invite imported from another identity server,
// with its own token, inside the caller's write transaction. No email is
// queued (the old server sent it). It reports false, writing nothing, when
// an invite with that token is already stored.
func (s *Service) ImportPending(tx *store.Tx, inv *Invite) (bool, error) {
	if inv.Token == "" {
		return false, matrix.MissingParams("imported invite has no token")
	}
	if id, err := s.st.byToken(tx, inv.Token); err != nil || id != 0 {
		return false, err
	}
	inv.Address = normalize(inv.Medium, inv.Address)
	inv.ID = 0
	inv.State = StatePending
	if inv.Homeserver == "" {
		inv.Homeserver = matrix.ServerName(inv.Sender)
	}
	return true, s.insert(tx, inv)
}

// HasData reports whether any invite is stored (a storage error reads as
// true: an importer then refuses rather than mixing data).
func (s *Service) HasData(tx *store.Tx) bool {
	has, err := s.st.hasData(tx)
	return has || err != nil
}
