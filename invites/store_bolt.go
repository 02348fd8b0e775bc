package invites

import (
	"bytes"

	"github.com/herald-im/herald/store"
)

// Buckets. Keys are big-endian ids so cursors walk them in creation order.
var (
	bktInvites = []byte("invites")       // id -> JSON Invite
	bktToken   = []byte("invites_token") // token -> id
	bktAddr    = []byte("invites_addr")  // medium 0 address 0 id -> nil
	bktDedup   = []byte("invites_dedup") // sender 0 room 0 medium 0 address -> id, pending only
	bktState   = []byte("invites_state") // state 0 id -> nil; for pending: mail id, expires_at (pendingValue)
)

var allBuckets = [][]byte{bktInvites, bktToken, bktAddr, bktDedup, bktState, bktExpiry, bktErase, bktBy, bktCount}

func join0(parts ...string) []byte {
	var b bytes.Buffer
	for i, p := range parts {
		if i > 0 {
			b.WriteByte(0)
		}
		b.WriteString(p)
	}
	return b.Bytes()
}

func addrPrefix(medium, address string) []byte { return append(join0(medium, address), 0) }

func addrKey(medium, address string, id uint64) []byte {
	return append(addrPrefix(medium, address), store.U64(id)...)
}

func dedupKey(sender, room, medium, address string) []byte {
	return join0(sender, room, medium, address)
}

func stateKey(state string, id uint64) []byte { return append(join0(state, ""), store.U64(id)...) }

// appendFill is the fill of pages split in buckets whose keys mostly grow
// (ids, times, prefix+id): bbolt's default of one half leaves every page
// half empty when keys are appended, which doubled the file. A tenth is left
// for records that grow a little in place.
const appendFill = 0.9

func u64(b []byte) uint64 {
	return store.ParseU64(b)
}
