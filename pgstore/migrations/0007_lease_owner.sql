-- The replica that holds a queue record's lease: its owner number
-- (pgstore.DB.Owner), whose advisory lock (class pgstore.OwnerLockClass) it
-- holds while it runs. A lease whose owner holds no such lock belongs to a
-- replica that died: another replica takes the record at once instead of
-- waiting for lease_until (a restart after kill -9 resumes its deliveries
-- right away). NULL: a lease without an owner (taken before this column),
-- which ends at lease_until only.
ALTER TABLE queue_records ADD COLUMN lease_owner bigint;
