-- What `herald import sydent` records about the deployment it took over
-- (bbolt bucket sydent_import, key "source"): its server name and signing
-- key, which the server needs to answer sydent's key_validity_url paths and
-- to sign onbind for invites sydent issued. One row at most; a deployment
-- migrated from bbolt brings it along (herald migrate-storage). The import
-- itself writes to bbolt only (docs/migrating-from-sydent.md).
CREATE TABLE sydent_import (
    one    boolean PRIMARY KEY DEFAULT true CHECK (one),
    source json    NOT NULL
);
