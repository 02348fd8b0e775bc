-- The leased pending records of each queue, by owner: the few records in
-- flight. pgqueue's reap (ending the leases of replicas that died) and its
-- next-claim query look for them; without this index both walked every
-- pending record of the queue, so under a mail backlog of tens of thousands
-- each reap took about 110 ms of the database's time, every 2 seconds on
-- every replica. Building it reads queue_records once (seconds at a million
-- rows), under the migration lock.
CREATE INDEX queue_records_leased ON queue_records (queue, lease_owner)
	WHERE state = 'pending' AND lease_until IS NOT NULL;
