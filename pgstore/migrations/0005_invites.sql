-- 0005_invites: the invites' tables (package invites; see
-- docs/storage-postgres.md). The record of an invite is its JSON, as on
-- bbolt; the columns beside it are what the indexes, sweeps and console
-- lists look up, written with the record in the same statement so they never
-- disagree with it.

-- Invite ids: increasing across replicas (a sequence, not a row counter that
-- every store-invite would wait on).
CREATE SEQUENCE invites_id_seq AS bigint;

-- One row per invite. token is NULL once erased after the retention period
-- (unique while held). expires_at is NULL for an invite that never expires.
-- holds_secret is true for a finished invite still holding its token or
-- ephemeral private key (what the erase sweep looks for). data is the whole
-- record (json, not jsonb, so it comes back byte for byte).
CREATE TABLE invites (
    id            bigint      PRIMARY KEY,
    token         text        UNIQUE,
    medium        text        NOT NULL,
    address       text        NOT NULL,
    state         text        NOT NULL CHECK (state IN ('pending', 'resolved', 'expired', 'revoked', 'declined')),
    sender        text        NOT NULL,
    room_id       text        NOT NULL,
    room_alias    text        NOT NULL DEFAULT '',
    homeserver    text        NOT NULL,
    created       timestamptz NOT NULL,
    state_changed timestamptz NOT NULL,
    expires_at    timestamptz,
    mail_id       bigint      NOT NULL DEFAULT 0,
    holds_secret  boolean     NOT NULL,
    data          json        NOT NULL
);
-- The invites of an address (bind resolution, erasure, console filter).
CREATE INDEX invites_address ON invites (medium, address, id);
-- Console lists by state, newest first; EachInState.
CREATE INDEX invites_state ON invites (state, id);
-- The pending invites with what the console's derived states need, so the
-- dashboard reads this index only.
CREATE INDEX invites_pending ON invites (id) INCLUDE (mail_id, expires_at) WHERE state = 'pending';
-- The expiry sweep: pending invites with an expiry, soonest first.
CREATE INDEX invites_expiry ON invites (expires_at, id) WHERE state = 'pending' AND expires_at IS NOT NULL;
-- The erase sweep: finished invites still holding a secret, oldest change first.
CREATE INDEX invites_erase ON invites (state_changed, id) WHERE holds_secret;
-- Console filters, newest first.
CREATE INDEX invites_sender ON invites (sender, id);
CREATE INDEX invites_room ON invites (room_id, id);
CREATE INDEX invites_alias ON invites (room_alias, id) WHERE room_alias <> '';
CREATE INDEX invites_homeserver ON invites (homeserver, id);

-- De-duplication of store-invite: the pending invite from a sender to an
-- address in a room. The primary key is what makes two replicas storing the
-- same invite at once end with one: the second's insert conflicts, its
-- serializable transaction fails and is run again, and then finds the first.
CREATE TABLE invite_dedup (
    sender    text   NOT NULL,
    room_id   text   NOT NULL,
    medium    text   NOT NULL,
    address   text   NOT NULL,
    invite_id bigint NOT NULL,
    PRIMARY KEY (sender, room_id, medium, address)
);

-- Counters: invites per state ("state:pending") and created or resolved per
-- UTC day ("created:20000", "resolved:20000", the day number since 1970).
-- A write inserts its changes into invite_count_deltas (inserts only: no hot
-- row for concurrent store-invites to wait on); FoldCounts moves them into
-- invite_counts now and then; readers add both, so counts are exact.
CREATE TABLE invite_counts (
    key text   PRIMARY KEY,
    n   bigint NOT NULL DEFAULT 0
);
CREATE TABLE invite_count_deltas (
    key text    NOT NULL,
    n   integer NOT NULL
);
CREATE INDEX invite_count_deltas_key ON invite_count_deltas (key);

-- Opt-outs: an address refuses invites from a sender ('*': from anyone).
CREATE TABLE invite_optouts (
    address text NOT NULL,
    sender  text NOT NULL,
    data    json NOT NULL,
    PRIMARY KEY (address, sender)
);

-- Upstream vouches (lookup.upstream): the vouch kept with the invite, and
-- when the vouched invite is to be resolved (removed once it was).
CREATE TABLE invite_vouches (
    invite_id bigint PRIMARY KEY,
    data      json   NOT NULL
);
CREATE TABLE invite_vouch_due (
    due       timestamptz NOT NULL,
    invite_id bigint      NOT NULL,
    PRIMARY KEY (due, invite_id)
);

-- The onbind deliveries' own indexes (the deliveries are queue_records of
-- the queue "onbind"): the deliveries that carried an invite, and the
-- deliveries to an address (erasure).
CREATE TABLE onbind_invite (
    invite_id   bigint NOT NULL,
    delivery_id bigint NOT NULL,
    PRIMARY KEY (invite_id, delivery_id)
);
CREATE TABLE onbind_address (
    medium      text   NOT NULL,
    address     text   NOT NULL,
    delivery_id bigint NOT NULL,
    PRIMARY KEY (medium, address, delivery_id)
);
