-- 0004_identity: the identity area (package identity) on PostgreSQL: bindings
-- and their hashed-lookup index, the lookup pepper, access tokens, accepted
-- terms and email validation sessions. Every replica reads and writes these
-- rows directly; nothing here is cached by a replica except the pepper (see
-- docs/storage-postgres.md, IDENTITY). Text keys are COLLATE "C" so that
-- their order is the byte order bbolt keeps (migrate-storage's sums).

-- One row per bound address (medium, normalised address).
CREATE TABLE identity_bindings (
    medium     text COLLATE "C" NOT NULL,
    address    text COLLATE "C" NOT NULL,
    mxid       text        NOT NULL,
    not_before timestamptz NOT NULL,
    not_after  timestamptz NOT NULL,
    ts         timestamptz NOT NULL,
    PRIMARY KEY (medium, address)
);

-- The hashed-lookup index for the current pepper: sha256(address " " medium
-- " " pepper) -> mxid, one row per binding, rebuilt in the transaction that
-- changes the pepper. Each replica keeps a copy of it in memory; until its
-- copy is built, a v2 lookup is one statement, hash = ANY($1), probing the
-- primary key's btree once per hash.
CREATE TABLE identity_lookup_hashes (
    hash bytea PRIMARY KEY CHECK (length(hash) = 32),
    mxid text  NOT NULL
);

-- What keeps the replicas' in-memory copies exact. Every change of the index
-- adds 1 to the generation (one row: changes of the index are serialised,
-- which binds, being rare, afford) and logs the change under the new
-- generation, in its own transaction, so generations commit in order and
-- without gaps. A lookup reads the generation and the changes its replica
-- has not applied in one statement before answering from memory: what was
-- committed before the lookup started is always in the answer. hash NULL:
-- the whole index changed (a new pepper, an import); mxid NULL: the hash was
-- removed. Changes are pruned after an hour; a replica that finds a gap
-- builds its copy again.
CREATE TABLE identity_lookup_gen (
    id  boolean PRIMARY KEY DEFAULT true CHECK (id),
    gen bigint  NOT NULL
);
INSERT INTO identity_lookup_gen (id, gen) VALUES (true, 0);
CREATE TABLE identity_lookup_changes (
    gen  bigint      PRIMARY KEY,
    hash bytea,
    mxid text,
    at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX identity_lookup_changes_at ON identity_lookup_changes (at);

-- The lookup pepper: one row (id is always true). Replicas cache it and are
-- told of a change by NOTIFY identity_pepper.
CREATE TABLE identity_lookup_pepper (
    id      boolean     PRIMARY KEY DEFAULT true CHECK (id),
    pepper  text        NOT NULL,
    created timestamptz NOT NULL
);

-- How many addresses are bound: identity_binding_count's single row plus the
-- rows of identity_binding_count_deltas (+1 / -1 inserted by the binding's
-- own transaction, so concurrent binds never wait on one hot row; folded
-- into the single row now and then by one statement).
CREATE TABLE identity_binding_count (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    n  bigint  NOT NULL
);
INSERT INTO identity_binding_count (id, n) VALUES (true, 0);
CREATE TABLE identity_binding_count_deltas (
    n integer NOT NULL
);

-- Access tokens, by sha256 of the token (the token itself is never stored).
-- A token that expired keeps a tombstone (expired set, user_id '') for one
-- more idle lifetime.
CREATE TABLE identity_accounts (
    token_hash bytea       PRIMARY KEY,
    user_id    text        NOT NULL DEFAULT '',
    created    timestamptz NOT NULL,
    last_used  timestamptz,
    expired    timestamptz
);
-- The idle-token sweep: live tokens by last use, tombstones by expiry.
CREATE INDEX identity_accounts_idle ON identity_accounts (last_used) WHERE expired IS NULL;
CREATE INDEX identity_accounts_tombstones ON identity_accounts (expired) WHERE expired IS NOT NULL;
CREATE INDEX identity_accounts_unused ON identity_accounts (token_hash) WHERE expired IS NULL AND last_used IS NULL;

-- Accepted terms: one row per user and accepted policy version.
CREATE TABLE identity_terms (
    user_id text COLLATE "C" NOT NULL,
    policy  text COLLATE "C" NOT NULL,
    version text COLLATE "C" NOT NULL,
    PRIMARY KEY (user_id, policy, version)
);

-- Email validation sessions. secret_hash and token_hashes are SHA-256
-- hashes; a session expires a lifetime after updated.
CREATE TABLE identity_sessions (
    sid          text COLLATE "C" PRIMARY KEY,
    secret_hash  bytea       NOT NULL,
    medium       text        NOT NULL,
    address      text        NOT NULL,
    send_attempt integer     NOT NULL,
    token_hashes bytea[]     NOT NULL DEFAULT '{}',
    next_link    text        NOT NULL DEFAULT '',
    created      timestamptz NOT NULL,
    updated      timestamptz NOT NULL,
    validated    timestamptz,
    mail_id      bigint      NOT NULL DEFAULT 0
);
-- The session sweep (by last change) and data-protection erasure (by address).
CREATE INDEX identity_sessions_updated ON identity_sessions (updated);
CREATE INDEX identity_sessions_address ON identity_sessions (address);

-- requestToken's de-duplication: sha256(client_secret 0 medium 0 address)
-- -> sid. Deleted with their session (by sid).
CREATE TABLE identity_session_keys (
    key bytea            PRIMARY KEY,
    sid text COLLATE "C" NOT NULL
);
CREATE INDEX identity_session_keys_sid ON identity_session_keys (sid);
