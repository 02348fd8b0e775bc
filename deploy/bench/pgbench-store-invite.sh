#!/bin/bash
# pgbench-store-invite.sh DB [K] [CLIENTS] [SECONDS]: PostgreSQL's own work
# for store-invite, without Herald (docs/benchmarks.md, "The ceiling on two
# shared cores"). K invites per transaction (default 1), each with the
# statements Herald's store-invite sends: the de-duplication claim under the
# address lock, the binding and opt-out reads, the outbox record with its
# two index rows and counter delta, the invite, its ephemeral key, the
# invite counter deltas. CLIENTS pgbench clients (default 32) for SECONDS
# (default 30). Prints the rate and PostgreSQL's CPU per invite: the
# machine's CPU less pgbench's, so run it on the machine PostgreSQL runs on,
# with nothing else running.
#
# DB is a migrated Herald database. The invites are added to it, with their
# outbox records already done, so no Herald worker would send them: use a
# benchmark database, not a live one. The literals have no colons: pgbench
# reads ":name" as one of its variables, even inside quotes.
#
# PGHOST, PGPORT, PGUSER as for psql; PGBENCH is pgbench's path if it is
# not on PATH.
set -euo pipefail
DB=$1; K=${2:-1}; C=${3:-32}; T=${4:-30}
PGBENCH=${PGBENCH:-pgbench}
script=$(mktemp); tf=$(mktemp); trap 'rm -f "$script" "$tf"' EXIT
{
echo "BEGIN;"
for i in $(seq 1 "$K"); do
cat <<S
\set r$i random(1, 9000000000000000000)
INSERT INTO invite_dedup (sender, room_id, medium, address, invite_id) SELECT '@bench_bench.test', '!bench_bench.test', 'email', 'pgb-' || :client_id::text || '-' || :r$i::text || '@bench.test', nextval('invites_id_seq') FROM (SELECT pg_advisory_xact_lock_shared(hashtextextended('herald.invites.address-email-pgb-' || :client_id::text || '-' || :r$i::text, 0))) l ON CONFLICT DO NOTHING RETURNING invite_id AS iid$i \gset
SELECT medium, address, mxid FROM identity_bindings WHERE medium = 'email' AND address = 'pgb-' || :client_id::text || '-' || :r$i::text || '@bench.test';
SELECT EXISTS (SELECT 1 FROM invite_optouts WHERE address = 'pgb-' || :client_id::text || '-' || :r$i::text || '@bench.test' AND (sender = '*' OR sender = '@bench_bench.test'));
INSERT INTO queue_records (queue, kind, state, created, next_attempt, retry_from, retry_base, finished, last_error, attempts, meta, data) VALUES ('outbox', 'invite', 'done', now(), now(), now(), 0, now(), '', '[]', '{"t":"si-9ba40a5e-128-63385@bench.test","s":"Bench invited you to Benchmark on Matrix","r":"invite-968359","m":"<7d05ed3c69792a05bed009487397c8e1@localhost>"}', NULL) RETURNING id AS mid$i \gset
INSERT INTO outbox_ref (ref, id) VALUES ('invite-' || :iid$i::text, :mid$i) ON CONFLICT DO NOTHING;
INSERT INTO outbox_to (addr, id) VALUES ('pgb-' || :client_id::text || '-' || :r$i::text || '@bench.test', :mid$i) ON CONFLICT DO NOTHING;
INSERT INTO queue_count_deltas (queue, state, n) VALUES ('outbox', 'done', 1);
INSERT INTO invites (id, token, medium, address, state, sender, room_id, room_alias, homeserver, created, state_changed, expires_at, mail_id, holds_secret, data) VALUES (:iid$i, md5(random()::text) || md5(random()::text), 'email', 'pgb-' || :client_id::text || '-' || :r$i::text || '@bench.test', 'pending', '@bench_bench.test', '!bench_bench.test', '', 'bench.test', now(), now(), now() + interval '7 days', :mid$i, false, '{"id":968359,"token":"N-2pleaKBmIwTLlRVAsqTdqMriFCLlASNe2wlcckXe0","medium":"email","address":"si-9ba40a5e-128-63385@bench.test","room_id":"!bench_bench.test","sender":"@bench_bench.test","room_name":"Benchmark","sender_display_name":"Bench","public_key":"ky6R51jfZJAXZ9WGyUmH5/hpEXK7dMG3OMpjF1N5JXM","key_id":"ed25519_h_4b5yE8iX","ephemeral_public":"P8lgfpx+cyKMIwXqdqAedrChIKqGAAIToEsWa8JMV2s","ephemeral_private":"htbIiPo6SSYt/YommXdyhVRAAHZrXizL0wDSNx1kINk","created":"2026-11-30T08:47:20.041295179Z","expires_at":"2026-12-07T08:47:20.041295179Z","state":"pending","state_changed":"2026-11-30T08:47:20.041295179Z","mail_id":968359,"homeserver":"bench.test","via":"v2","mailed_at":"2026-11-30T08:47:20.041295179Z"}') ON CONFLICT (id) DO UPDATE SET token = excluded.token;
INSERT INTO keys_ephemeral (pub, valid, ref, expires) VALUES (md5(random()::text), true, 'invite-' || :iid$i::text, now() + interval '7 days') ON CONFLICT (pub) DO UPDATE SET valid = excluded.valid;
INSERT INTO invite_count_deltas (key, n) SELECT * FROM unnest(ARRAY['state-pending','created-20000'], ARRAY[1,1]);
S
done
echo "COMMIT;"
} > "$script"
# CPU time of the whole machine (from /proc/stat, in clock ticks), and of
# this script's children (pgbench, in seconds): PostgreSQL's CPU is the
# difference on a machine that does nothing else meanwhile.
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
# kids runs times in this shell (in a $(...) it would see the subshell's
# children); kidsecs reads what it wrote.
kids() { times > "$tf"; }
kidsecs() { awk 'NR==2{split($1,u,/[ms]/); split($2,s,/[ms]/); print u[1]*60+u[2]+s[1]*60+s[2]}' "$tf"; }
B0=$(busy); kids; C0=$(kidsecs)
out=$("$PGBENCH" -n -M prepared -c "$C" -j 2 -T "$T" -f "$script" "$DB" 2>&1) || {
	echo "$out" | grep -i error | sort | uniq -c | head >&2
	echo "pgbench failed" >&2
	exit 1
}
B1=$(busy); kids; C1=$(kidsecs)
tx=$(echo "$out" | awk '/number of transactions actually processed/{print $NF}' | cut -d/ -f1)
hz=$(getconf CLK_TCK)
n=$(( tx * K ))
awk -v n="$n" -v t="$T" -v b="$(( B1 - B0 ))" -v hz="$hz" -v c0="$C0" -v c1="$C1" 'BEGIN{
	all = b / hz; pgb = c1 - c0; pg = all - pgb
	printf "%d invites in %d s: %d/s; CPU %.1f s, of which pgbench %.1f s; PostgreSQL %.0f us per invite\n",
		n, t, n / t, all, pgb, pg * 1e6 / n }'
