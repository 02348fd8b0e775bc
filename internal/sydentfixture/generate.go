package sydentfixture

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"fmt"
	"os"
	"time"

	_ "modernc.org/sqlite" // the same pure-Go driver the import reads with
)

// schema is sydent 2.6.1's (as in the sydent-a fixture's sqlite_master).
var schema = []string{
	`CREATE TABLE invite_tokens (id integer primary key, medium varchar(16) not null, address varchar(256) not null,
		room_id varchar(256) not null, sender varchar(256) not null, token varchar(256) not null, received_ts bigint, sent_ts bigint)`,
	`CREATE INDEX invite_token_medium_address on invite_tokens(medium, address)`,
	`CREATE INDEX invite_token_token on invite_tokens(token)`,
	`CREATE TABLE ephemeral_public_keys(id integer primary key, public_key varchar(256) not null, verify_count bigint default 0, persistence_ts bigint)`,
	`CREATE UNIQUE INDEX ephemeral_public_keys_index on ephemeral_public_keys(public_key)`,
	`CREATE TABLE threepid_validation_sessions (id integer primary key, medium varchar(16) not null, address varchar(256) not null, clientSecret varchar(32) not null, validated int default 0, mtime bigint not null)`,
	`CREATE TABLE threepid_token_auths (id integer primary key, validationSession integer not null, token varchar(32) not null, sendAttemptNumber integer not null, foreign key (validationSession) references threepid_validations(id))`,
	`CREATE TABLE peers (id integer primary key, name varchar(255) not null, port integer default null, lastSentVersion integer, lastPokeSucceededAt integer, active integer not null default 0)`,
	`CREATE TABLE local_threepid_associations (id integer primary key autoincrement, medium varchar(16) not null, address varchar(256) not null, mxid varchar(256), ts integer, notBefore bigint, notAfter bigint, lookup_hash VARCHAR(256))`,
	`CREATE UNIQUE INDEX local_threepid_medium_address on local_threepid_associations(medium, address)`,
	`CREATE TABLE global_threepid_associations (id integer primary key autoincrement, medium varchar(16) not null, address varchar(256) not null, mxid varchar(256) not null, ts integer not null, notBefore bigint not null, notAfter integer not null, originServer varchar(255) not null, originId integer not null, sgAssoc text not null, lookup_hash VARCHAR(256))`,
	`CREATE INDEX global_threepid_medium_address on global_threepid_associations (medium, address)`,
	`CREATE INDEX global_threepid_medium_lower_address on global_threepid_associations (medium, lower(address))`,
	`CREATE UNIQUE INDEX global_threepid_originServer_originId on global_threepid_associations (originServer, originId)`,
	`CREATE TABLE hashing_metadata (id integer primary key, lookup_pepper varchar(256))`,
	`CREATE TABLE accounts(user_id TEXT NOT NULL PRIMARY KEY, created_ts BIGINT NOT NULL, consent_version TEXT)`,
	`CREATE TABLE tokens(token TEXT NOT NULL PRIMARY KEY, user_id TEXT NOT NULL)`,
	`CREATE TABLE accepted_terms_urls(user_id TEXT NOT NULL, url TEXT NOT NULL)`,
	`CREATE INDEX global_threepid_lookup_hash ON global_threepid_associations(lookup_hash)`,
}

// Generated describes a generated deployment.
type Generated struct {
	DB, Config string
	Bindings   int
	Invites    int
}

// Generate writes a sydent-shaped deployment into dir: sydent.db with
// bindings bindings (each in the local and the global table, as sydent
// stores them), one pending invite and ephemeral key per 100 bindings, one
// account and token per 10 bindings, and sydent.conf with a fresh key.
func Generate(ctx context.Context, dir string, bindings int) (*Generated, error) {
	g := &Generated{DB: dir + "/sydent.db", Config: dir + "/sydent.conf", Bindings: bindings, Invites: bindings / 100}
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		return nil, err
	}
	conf := fmt.Sprintf("[general]\nserver.name = sydent-bench.example.org\n\n[http]\nclient_http_base = https://sydent-bench.example.org\n\n[crypto]\ned25519.signingkey = ed25519 0 %s\n",
		base64.RawStdEncoding.EncodeToString(priv.Seed()))
	if err := os.WriteFile(g.Config, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite", "file:"+g.DB+"?_pragma=journal_mode(off)&_pragma=synchronous(off)")
	if err != nil {
		return nil, err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	for _, s := range schema {
		if _, err := db.ExecContext(ctx, s); err != nil {
			return nil, fmt.Errorf("%s: %w", s, err)
		}
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	const pepper = "bench"
	if _, err := tx.ExecContext(ctx, "INSERT INTO hashing_metadata (id, lookup_pepper) VALUES (0, ?)", pepper); err != nil {
		return nil, err
	}
	local, err := tx.PrepareContext(ctx, "INSERT INTO local_threepid_associations (medium, address, mxid, ts, notBefore, notAfter, lookup_hash) VALUES ('email', ?, ?, ?, ?, ?, ?)")
	if err != nil {
		return nil, err
	}
	global, err := tx.PrepareContext(ctx, "INSERT INTO global_threepid_associations (medium, address, mxid, ts, notBefore, notAfter, originServer, originId, sgAssoc, lookup_hash) VALUES ('email', ?, ?, ?, ?, ?, 'sydent-bench.example.org', ?, ?, ?)")
	if err != nil {
		return nil, err
	}
	invite, err := tx.PrepareContext(ctx, "INSERT INTO invite_tokens (medium, address, room_id, sender, token, received_ts) VALUES ('email', ?, '!room:hs.test', '@inviter:hs.test', ?, ?)")
	if err != nil {
		return nil, err
	}
	eph, err := tx.PrepareContext(ctx, "INSERT INTO ephemeral_public_keys (public_key, persistence_ts) VALUES (?, ?)")
	if err != nil {
		return nil, err
	}
	acct, err := tx.PrepareContext(ctx, "INSERT INTO accounts (user_id, created_ts) VALUES (?, ?)")
	if err != nil {
		return nil, err
	}
	tok, err := tx.PrepareContext(ctx, "INSERT INTO tokens (token, user_id) VALUES (?, ?)")
	if err != nil {
		return nil, err
	}
	ts := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	for i := 0; i < bindings; i++ {
		addr := fmt.Sprintf("user%07d@example%d.org", i, i%97)
		mxid := fmt.Sprintf("@u%07d:hs%d.test", i, i%13)
		h := sha256.Sum256([]byte(addr + " email " + pepper))
		hash := base64.RawURLEncoding.EncodeToString(h[:])
		t := ts + int64(i)
		na := t + 100*365*24*3600*1000
		if _, err := local.ExecContext(ctx, addr, mxid, t, t, na, hash); err != nil {
			return nil, err
		}
		sg := fmt.Sprintf(`{"medium": "email", "address": %q, "mxid": %q, "ts": %d, "not_before": %d, "not_after": %d, "signatures": {}}`, addr, mxid, t, t, na)
		if _, err := global.ExecContext(ctx, addr, mxid, t, t, na, i+1, sg, hash); err != nil {
			return nil, err
		}
		if i%100 == 0 {
			pub, _, _ := ed25519.GenerateKey(nil)
			if _, err := invite.ExecContext(ctx, fmt.Sprintf("invitee%07d@example.net", i), fmt.Sprintf("tok%0125d", i), t/1000); err != nil {
				return nil, err
			}
			if _, err := eph.ExecContext(ctx, base64.RawURLEncoding.EncodeToString(pub), t/1000); err != nil {
				return nil, err
			}
		}
		if i%10 == 0 {
			if _, err := acct.ExecContext(ctx, mxid, t); err != nil {
				return nil, err
			}
			if _, err := tok.ExecContext(ctx, fmt.Sprintf("token%059d", i), mxid); err != nil {
				return nil, err
			}
		}
	}
	return g, tx.Commit()
}
