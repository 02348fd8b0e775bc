-- The durable queues (package queue's PostgreSQL backend, pgstore/pgqueue):
-- the mail outbox and the onbind deliveries, and any queue added later, in one
-- set of tables with a queue-name column. One table for all queues keeps one
-- schema, one set of indexes and one claim query; a new queue needs no
-- migration; every index starts with the queue name, so queues never scan
-- each other's rows.

-- One row per record, keyed by (queue, id): ids come from one sequence for
-- all queues, but records copied from bbolt (herald migrate-storage) keep the
-- ids bbolt gave them, which start at 1 in each queue. attempts and meta are json (not jsonb) so they come
-- back byte for byte as the owner wrote them. data is the payload, NULL once
-- removed (a done mail with TrimDone). lease_until is when the claim of the
-- replica attempting the record ends; NULL or past: claimable.
CREATE TABLE queue_records (
    id           bigserial   NOT NULL,
    queue        text        NOT NULL,
    kind         text        NOT NULL DEFAULT '',
    state        text        NOT NULL CHECK (state IN ('pending', 'done', 'failed', 'cancelled')),
    created      timestamptz NOT NULL,
    next_attempt timestamptz NOT NULL,
    retry_from   timestamptz NOT NULL,
    retry_base   integer     NOT NULL DEFAULT 0,
    finished     timestamptz,
    last_error   text        NOT NULL DEFAULT '',
    attempts     json        NOT NULL DEFAULT '[]',
    meta         json,
    data         bytea,
    lease_until  timestamptz,
    -- Listing every state newest first.
    PRIMARY KEY (queue, id)
);

-- The claim path: pending records of a queue in next-attempt order. Partial,
-- so done records (the bulk of a busy queue) are not in it.
CREATE INDEX queue_records_due ON queue_records (queue, next_attempt, id) WHERE state = 'pending';
-- Listing by state newest first, and Oldest.
CREATE INDEX queue_records_state ON queue_records (queue, state, id);
-- Retention: finished records by creation time.
CREATE INDEX queue_records_finished ON queue_records (queue, created) WHERE state <> 'pending';

-- Records per state. A transaction that changes states does not update
-- these rows (concurrent writers would then wait on, and deadlock over, the
-- same few rows): it inserts its changes into queue_count_deltas, in the same
-- transaction. The backend folds the deltas into queue_counts now and then
-- (one statement, counters in state order), and Stats adds the deltas not yet
-- folded, so the counts are exact at any moment.
CREATE TABLE queue_counts (
    queue text   NOT NULL,
    state text   NOT NULL,
    n     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, state)
);
CREATE TABLE queue_count_deltas (
    queue text    NOT NULL,
    state text    NOT NULL,
    n     integer NOT NULL
);
CREATE INDEX queue_count_deltas_queue ON queue_count_deltas (queue);

-- One row per failed attempt, for the failed-attempts-in-the-last-day figure
-- of Stats; pruned by age, removed with its record.
CREATE TABLE queue_failures (
    queue     text        NOT NULL,
    at        timestamptz NOT NULL,
    record_id bigint      NOT NULL,
    FOREIGN KEY (queue, record_id) REFERENCES queue_records (queue, id) ON DELETE CASCADE
);
CREATE INDEX queue_failures_at ON queue_failures (queue, at);
CREATE INDEX queue_failures_record ON queue_failures (queue, record_id);
