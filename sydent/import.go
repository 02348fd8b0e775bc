package sydent

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/store"
)

// Target is the Herald data the import writes into (Herald stopped).
type Target struct {
	DB        *store.DB
	Identity  *identity.Service
	Invites   *invites.Service
	Ring      *keys.Ring
	Ephemeral *keys.Ephemeral
}

// Options tune an import.
type Options struct {
	// Merge allows importing into a data_dir that already holds Herald data
	// (bindings, accounts or invites not from this sydent).
	Merge bool
	// InviteExpiry, when positive, is how long imported invites stay
	// pending, counted from the import (invites.expiry).
	InviteExpiry time.Duration
	// Progress, when set, is called now and then with the rows done so far.
	Progress func(Progress)
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// Progress is how far an import is.
type Progress struct {
	Stage       string // "bindings", "invites", ...
	Done, Total int    // rows read so far, rows to read in all
}

// Tally counts what became of one kind of record.
type Tally struct {
	Imported  int
	Unchanged int            // already in Herald, identical (a repeated import)
	Skipped   map[string]int // reason -> count
}

func (t *Tally) skip(reason string) {
	if t.Skipped == nil {
		t.Skipped = map[string]int{}
	}
	t.Skipped[reason]++
}

func (t *Tally) outcome(o identity.ImportOutcome, conflict string) {
	switch o {
	case identity.Imported:
		t.Imported++
	case identity.Unchanged:
		t.Unchanged++
	default:
		t.skip(conflict)
	}
}

// Report says what an import did.
type Report struct {
	ServerName    string
	KeyID         string
	Key           string // "imported" or "unchanged"
	Pepper        string // "imported", "unchanged" or why not
	Bindings      Tally
	Invites       Tally
	EphemeralKeys Tally
	Accounts      Tally
	Terms         Tally
	// NotImported lists what sydent had that Herald does not take over.
	NotImported []string
	Duration    time.Duration
}

// Changed reports whether the import wrote anything.
func (r *Report) Changed() bool {
	n := 0
	for _, t := range []Tally{r.Bindings, r.Invites, r.EphemeralKeys, r.Accounts, r.Terms} {
		n += t.Imported
	}
	return n > 0 || r.Key == "imported" || r.Pepper == "imported"
}

// String is the report for the operator, one line per kind of record.
func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "imported from sydent %s in %s\n", r.ServerName, r.Duration.Round(time.Millisecond))
	fmt.Fprintf(&b, "  signing key %s: %s\n", r.KeyID, r.Key)
	fmt.Fprintf(&b, "  lookup pepper: %s\n", r.Pepper)
	for _, row := range []struct {
		name string
		t    Tally
	}{{"bindings", r.Bindings}, {"pending invites", r.Invites}, {"ephemeral keys", r.EphemeralKeys},
		{"access tokens", r.Accounts}, {"accepted terms", r.Terms}} {
		fmt.Fprintf(&b, "  %s: %d imported, %d already there", row.name, row.t.Imported, row.t.Unchanged)
		reasons := make([]string, 0, len(row.t.Skipped))
		for why := range row.t.Skipped {
			reasons = append(reasons, why)
		}
		sort.Strings(reasons)
		for _, why := range reasons {
			fmt.Fprintf(&b, ", %d skipped: %s", row.t.Skipped[why], why)
		}
		b.WriteByte('\n')
	}
	for _, n := range r.NotImported {
		fmt.Fprintf(&b, "  not imported: %s\n", n)
	}
	return b.String()
}

// ErrHasData means the data_dir already holds Herald data and Merge is off.
var ErrHasData = errors.New("the data_dir already holds Herald data (bindings, accounts or invites); import into an empty data_dir, or pass --merge to add sydent's data to it")

// errNoChange rolls back a transaction that wrote nothing, so a repeated
// import leaves the file as it was.
var errNoChange = errors.New("nothing to change")

// metaBucket records the sydent deployment imported, for a repeated import
// and for the server (which serves sydent's key_validity_url paths).
var metaBucket = []byte("sydent_import")

// Imported is what the metadata records about the imported deployment.
type Imported struct {
	ServerName     string    `json:"server_name"`
	KeyID          string    `json:"key_id"`
	PublicKey      string    `json:"public_key"`
	ClientHTTPBase string    `json:"client_http_base,omitempty"`
	ValidityPrefix string    `json:"validity_prefix,omitempty"` // path before /_matrix in key_validity_urls
	At             time.Time `json:"at"`
}

// ImportedDeployment returns the sydent deployment imported into db, or nil.
func ImportedDeployment(db *store.DB) (*Imported, error) {
	raw, err := importedRaw(db)
	if err != nil || raw == nil {
		return nil, err
	}
	out := new(Imported)
	return out, json.Unmarshal(raw, out)
}

// importedRaw is the stored record of the import, as stored (nil: none).
func importedRaw(db *store.DB) (raw []byte, err error) {
	err = db.View(func(tx *store.Tx) error {
		if tx.PG != nil {
			err := tx.PG.QueryRow(tx.Context(), `SELECT source::text FROM sydent_import`).Scan(&raw)
			if errors.Is(err, pgx.ErrNoRows) {
				return nil
			}
			return err
		}
		if b := tx.Bolt.Bucket(metaBucket); b != nil {
			raw = store.Copy(b.Get([]byte("source")))
		}
		return nil
	})
	return raw, err
}

// CopyStorage copies the record of a sydent import (if any) from a bbolt
// database into PostgreSQL, for herald migrate-storage.
func CopyStorage(ctx context.Context, src, dst *store.DB, progress func(n int)) error {
	raw, err := importedRaw(src)
	if err != nil || raw == nil {
		return err
	}
	if dst.Backend() != store.BackendPostgres {
		return errors.New("sydent: CopyStorage copies into PostgreSQL")
	}
	err = dst.UpdateContext(ctx, func(tx *store.Tx) error {
		_, err := tx.PG.Exec(tx.Context(), `INSERT INTO sydent_import (source) VALUES ($1::json)`, string(raw))
		return err
	})
	if err == nil {
		progress(1)
	}
	return err
}

// SumStorage sums the import record (table "sydent_import"), byte for byte
// on both backends (PostgreSQL's json type keeps the text as stored).
func SumStorage(ctx context.Context, db *store.DB) ([]store.TableSum, error) {
	raw, err := importedRaw(db)
	if err != nil {
		return nil, err
	}
	s := store.NewSummer("sydent_import")
	if raw != nil {
		s.Add(raw)
	}
	return []store.TableSum{s.Sum()}, nil
}

// RecordImportedKey records, inside the import's transaction, that invites
// were issued under keyID (public key pub, unpadded base64) before Herald
// took over. It is the one place the import registers a key with the
// database.
func RecordImportedKey(tx *store.Tx, keyID, pub string) (bool, error) {
	b, err := tx.Bolt.CreateBucketIfNotExists(metaBucket)
	if err != nil {
		return false, err
	}
	// The database records every key it is used with (store.RecordKeysTx):
	// start-up refuses a key ring and a database that disagree.
	if err := store.RecordKeysTx(tx.Bolt, keyID); err != nil {
		return false, err
	}
	k := []byte("key\x00" + keyID)
	if string(b.Get(k)) == pub {
		return false, nil
	}
	return true, b.Put(k, []byte(pub))
}

// Import imports the sydent deployment whose database is at dbPath and whose
// config is cfg into t, in one bbolt transaction: interrupted (ctx done) or
// failed, it writes nothing to the database (the signing key, written to
// the key ring first, is then already there; a repeated import finds it).
func Import(ctx context.Context, t Target, dbPath string, cfg *Config, opts Options) (*Report, error) {
	r, err := doImport(ctx, t, dbPath, cfg, opts)
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("import interrupted; nothing was written to the database (run it again): %w", ctx.Err())
	}
	return r, err
}

func doImport(ctx context.Context, t Target, dbPath string, cfg *Config, opts Options) (*Report, error) {
	if t.DB.Backend() != store.BackendBolt {
		return nil, errors.New("herald import sydent writes a bbolt data_dir: import there, then copy it with herald migrate-storage --to postgres (docs/migrating-from-sydent.md)")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	start := opts.Now()
	src, err := openSource(ctx, dbPath)
	if err != nil {
		return nil, err
	}
	defer src.Close()

	pub := keys.EncodeBase64(cfg.Key.Public().(ed25519.PublicKey))
	var prev *Imported
	if prev, err = ImportedDeployment(t.DB); err != nil {
		return nil, err
	}
	switch {
	case prev != nil && prev.ServerName == cfg.ServerName && prev.PublicKey == pub:
		// A repeated import of the same deployment.
	case opts.Merge:
	case prev != nil:
		return nil, fmt.Errorf("the data_dir already holds an import of sydent %s (key %s); pass --merge to add another deployment to it", prev.ServerName, prev.KeyID)
	default:
		has := false
		_ = t.DB.View(func(tx *store.Tx) error {
			has = t.Identity.HasData(tx) || t.Invites.HasData(tx)
			return nil
		})
		if has {
			return nil, ErrHasData
		}
	}

	r := &Report{ServerName: cfg.ServerName, KeyID: cfg.KeyID, Key: "unchanged"}
	added, err := t.Ring.AddImported(cfg.KeyID, cfg.Key, start)
	if err != nil {
		return nil, err
	}
	if added {
		r.Key = "imported"
	}

	im := &importer{ctx: ctx, t: t, src: src, cfg: cfg, opts: opts, r: r, pub: pub, now: start, first: prev == nil}
	if err := im.countAll(); err != nil {
		return nil, err
	}
	err = t.DB.Update(func(tx *store.Tx) error {
		if err := im.run(tx); err != nil {
			return err
		}
		if !r.Changed() && !im.metaChanged {
			return errNoChange
		}
		return nil
	})
	if err != nil && !errors.Is(err, errNoChange) {
		return nil, err
	}
	if err := im.notImported(); err != nil {
		return nil, err
	}
	r.Duration = opts.Now().Sub(start)
	return r, nil
}

type importer struct {
	ctx         context.Context
	t           Target
	src         *source
	cfg         *Config
	opts        Options
	r           *Report
	pub         string
	now         time.Time
	first       bool // no earlier import of this deployment
	metaChanged bool

	done, total int
	lastReport  time.Time
}

func (im *importer) countAll() error {
	queries := []string{
		"SELECT count(*) FROM global_threepid_associations",
		"SELECT count(*) FROM local_threepid_associations",
		"SELECT count(*) FROM invite_tokens",
		"SELECT count(*) FROM ephemeral_public_keys",
	}
	if im.src.tables["tokens"] {
		queries = append(queries, "SELECT count(*) FROM tokens")
	}
	if im.src.tables["accepted_terms_urls"] {
		queries = append(queries, "SELECT count(*) FROM accepted_terms_urls")
	}
	for _, q := range queries {
		n, err := im.src.count(im.ctx, q)
		if err != nil {
			return err
		}
		im.total += n
	}
	return nil
}

// step counts one row read and reports progress about twice a second; it
// fails when the import was interrupted.
func (im *importer) step(stage string) error {
	im.done++
	if err := im.ctx.Err(); err != nil {
		return err
	}
	if im.done%1024 != 0 {
		return nil
	}
	if im.opts.Progress != nil {
		if now := time.Now(); now.Sub(im.lastReport) > 500*time.Millisecond {
			im.lastReport = now
			im.opts.Progress(Progress{Stage: stage, Done: im.done, Total: im.total})
		}
	}
	return nil
}

func (im *importer) run(tx *store.Tx) error {
	if err := im.pepper(tx); err != nil {
		return err
	}
	if err := im.bindings(tx); err != nil {
		return err
	}
	if err := im.invites(tx); err != nil {
		return err
	}
	if err := im.ephemeral(tx); err != nil {
		return err
	}
	if err := im.accounts(tx); err != nil {
		return err
	}
	if err := im.terms(tx); err != nil {
		return err
	}
	changed, err := RecordImportedKey(tx, im.cfg.KeyID, im.pub)
	if err != nil {
		return err
	}
	im.metaChanged = changed
	b, err := tx.Bolt.CreateBucketIfNotExists(metaBucket)
	if err != nil {
		return err
	}
	if b.Get([]byte("source")) == nil {
		_, prefix := im.cfg.ValidityBase()
		raw, _ := json.Marshal(Imported{ServerName: im.cfg.ServerName, KeyID: im.cfg.KeyID, PublicKey: im.pub,
			ClientHTTPBase: im.cfg.ClientHTTPBase, ValidityPrefix: prefix, At: im.now.UTC()})
		im.metaChanged = true
		if err := b.Put([]byte("source"), raw); err != nil {
			return err
		}
	}
	if im.opts.Progress != nil {
		im.opts.Progress(Progress{Stage: "done", Done: im.total, Total: im.total})
	}
	return nil
}

func (im *importer) pepper(tx *store.Tx) error {
	if !im.src.tables["hashing_metadata"] {
		im.r.Pepper = "none in this sydent version (Herald keeps its own)"
		return nil
	}
	var pepper sql.NullString
	err := im.src.db.QueryRowContext(im.ctx, "SELECT lookup_pepper FROM hashing_metadata LIMIT 1").Scan(&pepper)
	switch {
	case errors.Is(err, sql.ErrNoRows) || (err == nil && pepper.String == ""):
		im.r.Pepper = "none set in sydent (Herald keeps its own)"
		return nil
	case err != nil:
		return im.src.fail("%s", sqliteMessage(err))
	case !im.first:
		// Herald may have rotated it since the first import: keep Herald's.
		im.r.Pepper = "unchanged (imported before)"
		return nil
	}
	o, err := im.t.Identity.ImportPepper(tx, pepper.String)
	if err != nil {
		return err
	}
	im.r.Pepper = map[identity.ImportOutcome]string{identity.Imported: "imported", identity.Unchanged: "unchanged"}[o]
	return nil
}

const (
	whyExpired    = "binding past its not_after"
	whyBadAddress = "address Herald cannot accept"
	whyOtherMXID  = "address already bound to another mxid in Herald"
	whyDuplicate  = "address bound twice in sydent (the newest was kept)"
	whyTombstone  = "unbound in sydent (tombstone)"
	whyDelivered  = "already delivered by sydent (sent_ts set)"
	whyMedium     = "not an email invite"
	whyNoPolicy   = "URL of no policy in Herald's terms configuration"
	whyTokenOther = "token already belongs to another user in Herald"
)

type assoc struct {
	medium, address, mxid string
	ts, notBefore         int64
	notAfter              int64
}

// bindings imports the global associations (every binding sydent answered
// lookups with, its own and replicated ones), the newest per address, then
// any local association in force missing from the global table.
func (im *importer) bindings(tx *store.Tx) error {
	nowMS := im.now.UnixMilli()
	bi, err := im.t.Identity.ImportBindings(tx)
	if err != nil {
		return err
	}
	put := func(a assoc) error {
		if a.notAfter != 0 && a.notAfter <= nowMS {
			im.r.Bindings.skip(whyExpired)
			return nil
		}
		addr := a.address
		if a.medium == "email" {
			n, err := identity.NormalizeEmail(addr)
			if err != nil {
				im.r.Bindings.skip(whyBadAddress)
				return nil
			}
			addr = n
		}
		b := identity.Binding{Medium: a.medium, Address: addr, MXID: a.mxid,
			TS: time.UnixMilli(a.ts).UTC(), NotBefore: time.UnixMilli(a.notBefore).UTC(), NotAfter: time.UnixMilli(a.notAfter).UTC()}
		if a.notAfter == 0 {
			b.NotAfter = time.Time{}
		}
		o, err := bi.Add(b)
		if err != nil {
			return err
		}
		im.r.Bindings.outcome(o, whyOtherMXID)
		return nil
	}
	// Ordered by address then time: the rows of one address come together,
	// newest last, and bbolt gets its keys nearly in order.
	rows, err := im.src.db.QueryContext(im.ctx, `SELECT medium, address, mxid, ts, notBefore, notAfter
		FROM global_threepid_associations ORDER BY medium, lower(address), ts`)
	if err != nil {
		return im.src.fail("%s", sqliteMessage(err))
	}
	defer rows.Close()
	var pending *assoc
	for rows.Next() {
		var a assoc
		var nb, na sql.NullInt64
		if err := rows.Scan(&a.medium, &a.address, &a.mxid, &a.ts, &nb, &na); err != nil {
			return im.src.fail("%s", sqliteMessage(err))
		}
		a.notBefore, a.notAfter = nb.Int64, na.Int64
		if nb.Int64 == 0 {
			a.notBefore = a.ts
		}
		if err := im.step("bindings"); err != nil {
			return err
		}
		if pending != nil && (pending.medium != a.medium || !sameAddress(pending.address, a.address)) {
			if err := put(*pending); err != nil {
				return err
			}
		} else if pending != nil {
			im.r.Bindings.skip(whyDuplicate)
		}
		pending = &a
	}
	if err := rows.Err(); err != nil {
		return im.src.fail("%s", sqliteMessage(err))
	}
	if pending != nil {
		if err := put(*pending); err != nil {
			return err
		}
	}
	rows.Close()

	local, err := im.src.db.QueryContext(im.ctx, `SELECT l.medium, l.address, l.mxid, l.ts, l.notBefore, l.notAfter
		FROM local_threepid_associations l
		WHERE NOT EXISTS (SELECT 1 FROM global_threepid_associations g WHERE g.medium = l.medium AND g.address = l.address)
		ORDER BY l.medium, lower(l.address)`)
	if err != nil {
		return im.src.fail("%s", sqliteMessage(err))
	}
	defer local.Close()
	localOnly := 0
	for local.Next() {
		var a assoc
		var mxid sql.NullString
		var ts, nb, na sql.NullInt64
		if err := local.Scan(&a.medium, &a.address, &mxid, &ts, &nb, &na); err != nil {
			return im.src.fail("%s", sqliteMessage(err))
		}
		localOnly++
		if err := im.step("bindings"); err != nil {
			return err
		}
		if !mxid.Valid || mxid.String == "" {
			im.r.Bindings.skip(whyTombstone)
			continue
		}
		a.mxid, a.ts, a.notBefore, a.notAfter = mxid.String, ts.Int64, nb.Int64, na.Int64
		if err := put(a); err != nil {
			return err
		}
	}
	if err := local.Err(); err != nil {
		return im.src.fail("%s", sqliteMessage(err))
	}
	// The local rows also in the global table were read there.
	lc, err := im.src.count(im.ctx, "SELECT count(*) FROM local_threepid_associations")
	if err != nil {
		return err
	}
	im.done += lc - localOnly
	return bi.Close()
}

// sameAddress reports whether a and b are one address once case-folded.
func sameAddress(a, b string) bool {
	if a == b {
		return true
	}
	if ascii(a) && ascii(b) {
		return strings.EqualFold(a, b)
	}
	na, err1 := identity.NormalizeEmail(a)
	nb, err2 := identity.NormalizeEmail(b)
	return err1 == nil && err2 == nil && na == nb
}

func serverOf(userID string) string {
	_, s, _ := strings.Cut(userID, ":")
	return s
}

// invites imports invite_tokens rows sydent has not sent (sent_ts NULL): the
// pending invites. Their events name sydent's long-term key and its
// key_validity_url; onbind for them is signed under sydent's key id and
// server name.
func (im *importer) invites(tx *store.Tx) error {
	rows, err := im.src.db.QueryContext(im.ctx, `SELECT medium, address, room_id, sender, token, received_ts, sent_ts
		FROM invite_tokens ORDER BY id`)
	if err != nil {
		return im.src.fail("%s", sqliteMessage(err))
	}
	defer rows.Close()
	for rows.Next() {
		var medium, address, room, sender, token string
		var received, sent sql.NullInt64
		if err := rows.Scan(&medium, &address, &room, &sender, &token, &received, &sent); err != nil {
			return im.src.fail("%s", sqliteMessage(err))
		}
		if err := im.step("invites"); err != nil {
			return err
		}
		if sent.Valid {
			im.r.Invites.skip(whyDelivered)
			continue
		}
		if medium != "email" {
			im.r.Invites.skip(whyMedium)
			continue
		}
		addr, err := identity.NormalizeEmail(address)
		if err != nil {
			im.r.Invites.skip(whyBadAddress)
			continue
		}
		created := im.now.UTC()
		if received.Valid && received.Int64 > 0 {
			created = time.Unix(received.Int64, 0).UTC()
		}
		inv := &invites.Invite{
			Token: token, Medium: medium, Address: addr, RoomID: room, Sender: sender,
			PublicKey: im.pub, KeyID: im.cfg.KeyID, SignAs: im.cfg.ServerName,
			Created: created, StateChanged: created, Homeserver: serverOf(sender), Via: invites.ViaSydent,
		}
		if im.opts.InviteExpiry > 0 {
			inv.ExpiresAt = im.now.UTC().Add(im.opts.InviteExpiry)
		}
		ok, err := im.t.Invites.ImportPending(tx, inv)
		if err != nil {
			return err
		}
		if ok {
			im.r.Invites.Imported++
		} else {
			im.r.Invites.Unchanged++
		}
	}
	if err := rows.Err(); err != nil {
		return im.src.fail("%s", sqliteMessage(err))
	}
	return nil
}

// ephemeral imports every ephemeral public key byte for byte (sydent's
// URL-safe base64), valid as sydent kept them: sydent records no link from
// a key to its invite, so each stays valid after its invite is resolved.
func (im *importer) ephemeral(tx *store.Tx) error {
	rows, err := im.src.db.QueryContext(im.ctx, "SELECT id, public_key FROM ephemeral_public_keys ORDER BY id")
	if err != nil {
		return im.src.fail("%s", sqliteMessage(err))
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var pub string
		if err := rows.Scan(&id, &pub); err != nil {
			return im.src.fail("%s", sqliteMessage(err))
		}
		if err := im.step("ephemeral keys"); err != nil {
			return err
		}
		if b, err := keys.DecodeBase64(pub); err != nil || len(b) != 32 {
			im.r.EphemeralKeys.skip("not an ed25519 public key")
			continue
		}
		if im.t.Ephemeral.Has(tx, pub) {
			im.r.EphemeralKeys.Unchanged++
			continue
		}
		if err := im.t.Ephemeral.Put(tx, pub, fmt.Sprintf("%s%d", invites.SydentEphemeralRef, id), time.Time{}); err != nil {
			return err
		}
		im.r.EphemeralKeys.Imported++
	}
	if err := rows.Err(); err != nil {
		return im.src.fail("%s", sqliteMessage(err))
	}
	return nil
}

// accounts imports every access token (stored hashed) with its user, so
// homeservers and clients need not register again.
func (im *importer) accounts(tx *store.Tx) error {
	if !im.src.tables["tokens"] {
		return nil
	}
	q := "SELECT t.token, t.user_id, NULL FROM tokens t"
	if im.src.tables["accounts"] {
		q = "SELECT t.token, t.user_id, a.created_ts FROM tokens t LEFT JOIN accounts a ON a.user_id = t.user_id"
	}
	rows, err := im.src.db.QueryContext(im.ctx, q)
	if err != nil {
		return im.src.fail("%s", sqliteMessage(err))
	}
	defer rows.Close()
	var accts []identity.ImportedAccount
	for rows.Next() {
		var token, user string
		var created sql.NullInt64
		if err := rows.Scan(&token, &user, &created); err != nil {
			return im.src.fail("%s", sqliteMessage(err))
		}
		if err := im.step("access tokens"); err != nil {
			return err
		}
		when := im.now
		if created.Valid && created.Int64 > 0 {
			when = time.UnixMilli(created.Int64)
		}
		accts = append(accts, identity.ImportedAccount{Token: token, UserID: user, Created: when})
	}
	if err := rows.Err(); err != nil {
		return im.src.fail("%s", sqliteMessage(err))
	}
	outs, err := im.t.Identity.ImportAccounts(tx, accts)
	if err != nil {
		return err
	}
	for _, o := range outs {
		im.r.Accounts.outcome(o, whyTokenOther)
	}
	return nil
}

// terms imports accepted terms URLs, per user, as acceptance of the
// policies Herald's configuration lists under those URLs.
func (im *importer) terms(tx *store.Tx) error {
	if !im.src.tables["accepted_terms_urls"] {
		return nil
	}
	rows, err := im.src.db.QueryContext(im.ctx, "SELECT user_id, url FROM accepted_terms_urls ORDER BY user_id")
	if err != nil {
		return im.src.fail("%s", sqliteMessage(err))
	}
	defer rows.Close()
	var user string
	var urls []string
	flush := func() error {
		if user == "" {
			return nil
		}
		o, err := im.t.Identity.ImportAcceptedTerms(tx, user, urls)
		if err != nil {
			return err
		}
		im.r.Terms.outcome(o, whyNoPolicy)
		return nil
	}
	for rows.Next() {
		var u, link string
		if err := rows.Scan(&u, &link); err != nil {
			return im.src.fail("%s", sqliteMessage(err))
		}
		if err := im.step("accepted terms"); err != nil {
			return err
		}
		if u != user {
			if err := flush(); err != nil {
				return err
			}
			user, urls = u, nil
		}
		urls = append(urls, link)
	}
	if err := rows.Err(); err != nil {
		return im.src.fail("%s", sqliteMessage(err))
	}
	return flush()
}

// notImported counts what stays behind: validation sessions in flight and
// replication peers.
func (im *importer) notImported() error {
	if im.src.tables["threepid_validation_sessions"] {
		n, err := im.src.count(im.ctx, "SELECT count(*) FROM threepid_validation_sessions")
		if err != nil {
			return err
		}
		if n > 0 {
			im.r.NotImported = append(im.r.NotImported, fmt.Sprintf("%d email validation sessions (finished or in flight: whoever was validating when sydent stopped asks for a new code)", n))
		}
	}
	if im.src.tables["peers"] {
		n, err := im.src.count(im.ctx, "SELECT count(*) FROM peers")
		if err != nil {
			return err
		}
		if n > 0 {
			im.r.NotImported = append(im.r.NotImported, fmt.Sprintf("%d replication peers (Herald does not replicate; their associations in the global table were imported as bindings)", n))
		}
	}
	return nil
}

func ascii(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
