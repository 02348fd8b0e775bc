-- 0005_invites: tables of this area on PostgreSQL (see docs/storage-postgres.md).
SELECT 1;
