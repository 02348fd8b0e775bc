-- 0003_keys_admin_mail: tables of this area on PostgreSQL (see docs/storage-postgres.md).
SELECT 1;
