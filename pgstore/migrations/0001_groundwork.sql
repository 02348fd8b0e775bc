-- What the helpers of package pgstore need; the feature tables come in later
-- migrations.

-- One row per applied migration (the migrator writes it in the migration's
-- own transaction).
CREATE TABLE schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL, -- sha256 of the file, hex
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Cluster-wide periodic jobs (sweeps): when each is next due. A replica runs
-- a job only while holding its advisory lock, and moves next_run forward
-- when the run succeeded, so a job runs once per period across replicas.
CREATE TABLE periodic_jobs (
    name          text        PRIMARY KEY,
    next_run      timestamptz NOT NULL,
    last_started  timestamptz,
    last_finished timestamptz,
    last_holder   text        NOT NULL DEFAULT '' -- the replica that ran it last (host name, pid)
);
