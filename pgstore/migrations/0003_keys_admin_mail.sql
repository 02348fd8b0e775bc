-- 0003_keys_admin_mail: the tables of the signing keys (package keys), the
-- admin console (package admin) and the mail outbox's indexes and dev mailbox
-- (package mailer) on PostgreSQL. See docs/storage-postgres.md.

-- The long-term signing keys, shared by every replica (on bbolt deployments
-- they are JWK files in data_dir/keys). private_key is the 32-byte ed25519
-- seed: whoever can read this table can sign as the identity server, so it is
-- readable only by the role Herald connects as (docs/storage-postgres.md).
-- Exactly one key is current (the partial unique index), and the current key
-- is never retired.
CREATE TABLE signing_keys (
    id          text        PRIMARY KEY,
    private_key bytea       NOT NULL CHECK (length(private_key) = 32),
    created     timestamptz NOT NULL,
    retired     timestamptz,
    is_current  boolean     NOT NULL DEFAULT false,
    CHECK (NOT (is_current AND retired IS NOT NULL))
);
CREATE UNIQUE INDEX signing_keys_one_current ON signing_keys (is_current) WHERE is_current;

-- One row counting the writes to signing_keys: replicas poll it (one row) to
-- notice a change whose NOTIFY they missed, and reload the ring only then.
CREATE TABLE signing_keys_version (
    one     boolean PRIMARY KEY DEFAULT true CHECK (one),
    version bigint  NOT NULL DEFAULT 0
);
INSERT INTO signing_keys_version DEFAULT VALUES;

-- The public halves of per-invite ephemeral keys (bbolt bucket
-- keys_ephemeral): pub is the unpadded base64 key as stored, ref what owns it
-- (an invite id), expires NULL for no expiry. isvalid reads it by primary key.
CREATE TABLE keys_ephemeral (
    pub     text        COLLATE "C" PRIMARY KEY,
    valid   boolean     NOT NULL,
    ref     text        NOT NULL DEFAULT '',
    expires timestamptz
);

-- The mail outbox's own indexes (bbolt buckets outbox_ref and outbox_to)
-- beside its queue records (queue_records, queue 'outbox'): the mail of an
-- invite or session (ref), and of a recipient (addr, lower-cased) for the
-- console's filters and data-protection erasure. A row goes with its record.
CREATE TABLE outbox_ref (
    ref text   COLLATE "C" NOT NULL,
    id  bigint NOT NULL,
    -- queue_records is keyed by (queue, id): the constant column lets the
    -- row reference its outbox record.
    queue text NOT NULL DEFAULT 'outbox' CHECK (queue = 'outbox'),
    FOREIGN KEY (queue, id) REFERENCES queue_records (queue, id) ON DELETE CASCADE,
    PRIMARY KEY (ref, id)
);
CREATE INDEX outbox_ref_id ON outbox_ref (id);
CREATE TABLE outbox_to (
    addr text   COLLATE "C" NOT NULL,
    id   bigint NOT NULL,
    queue text NOT NULL DEFAULT 'outbox' CHECK (queue = 'outbox'),
    FOREIGN KEY (queue, id) REFERENCES queue_records (queue, id) ON DELETE CASCADE,
    PRIMARY KEY (addr, id)
);
CREATE INDEX outbox_to_id ON outbox_to (id);

-- The dev mailbox (no smtp.host): each mail "sent" is a row, shared so the
-- console of any replica lists every replica's mail (on bbolt deployments,
-- .eml files in data_dir/mailbox). Bounded to the newest 1,000: a save
-- deletes the older rows now and then. Names are unique, as file names are.
CREATE TABLE dev_mailbox (
    id        bigserial   PRIMARY KEY,
    name      text        NOT NULL UNIQUE,
    recipient text        NOT NULL DEFAULT '',
    subject   text        NOT NULL DEFAULT '',
    created   timestamptz NOT NULL,
    raw       bytea       NOT NULL
);

-- The admin console's accounts (bbolt bucket admin_users): argon2id hashes,
-- never passwords. Accounts from admin.users in the configuration are not
-- stored.
CREATE TABLE admin_users (
    username      text        COLLATE "C" PRIMARY KEY,
    password_hash text        NOT NULL,
    created       timestamptz NOT NULL
);

-- Console sessions (bucket admin_sessions), shared so a session started on
-- one replica is valid on every replica. Expired rows are deleted when a
-- session starts (by expires); an account's go with it (by username).
CREATE TABLE admin_sessions (
    id       text        COLLATE "C" PRIMARY KEY,
    username text        NOT NULL,
    created  timestamptz NOT NULL,
    expires  timestamptz NOT NULL
);
CREATE INDEX admin_sessions_expires ON admin_sessions (expires);
CREATE INDEX admin_sessions_username ON admin_sessions (username);

-- The console's secrets (bucket admin_meta): 'hmac_key', the 32-byte key
-- that signs session cookies and CSRF tokens, made by the first replica to
-- start and shared by all.
CREATE TABLE admin_meta (
    name  text  PRIMARY KEY,
    value bytea NOT NULL
);

-- The audit log (bucket admin_audit), in insertion order (id); bounded by
-- admin.audit_retention (by at) and admin.audit_max_entries (the oldest ids
-- go first, counted in admin_audit_count: console actions are rare, so one
-- counter row is not a hot row).
CREATE TABLE admin_audit (
    id     bigserial   PRIMARY KEY,
    at     timestamptz NOT NULL,
    who    text        NOT NULL,
    action text        NOT NULL,
    target text        NOT NULL DEFAULT '',
    detail text        NOT NULL DEFAULT '',
    ok     boolean     NOT NULL
);
CREATE INDEX admin_audit_at ON admin_audit (at);
CREATE TABLE admin_audit_count (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    n   bigint  NOT NULL DEFAULT 0
);
INSERT INTO admin_audit_count DEFAULT VALUES;
