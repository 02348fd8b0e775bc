package mailer

import (
	"bytes"
	"compress/flate"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"math"
	"mime"
	"net/mail"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/herald-im/herald/matrix"
	"github.com/herald-im/herald/queue"
	"github.com/herald-im/herald/store"
)

// State of a queued mail.
type State string

const (
	Pending State = "pending" // waiting for its next attempt
	Sent    State = "sent"    // accepted by the server (or written to the dev mailbox)
	Failed  State = "failed"  // refused permanently, or retried until the budget ran out
)

// Attempt is one try at sending, with the server's reply (or the error).
type Attempt = queue.Attempt

// Mail is a queued message and its history.
type Mail struct {
	ID          uint64    `json:"id"`
	To          string    `json:"to"`
	Subject     string    `json:"subject"`
	Kind        string    `json:"kind,omitempty"`
	Ref         string    `json:"ref,omitempty"`
	MessageID   string    `json:"message_id,omitempty"`
	State       State     `json:"state"`
	Created     time.Time `json:"created"`
	NextAttempt time.Time `json:"next_attempt"` // meaningful while Pending
	Attempts    []Attempt `json:"attempts"`
	LastError   string    `json:"last_error,omitempty"`
	// RetryFrom and RetryBase start the retry budget: at enqueue, and again
	// when an operator retries.
	RetryFrom time.Time `json:"retry_from"`
	RetryBase int       `json:"retry_base,omitempty"`
	// Raw is the composed message, filled by Get while the mail is pending
	// or failed; nil in List and ByRef, and once the mail is sent: the body
	// (with the tokens and keys it carried) leaves the database then.
	Raw []byte `json:"-"`
}

// LastAttempt is the latest attempt, or nil.
func (m *Mail) LastAttempt() *Attempt {
	if len(m.Attempts) == 0 {
		return nil
	}
	return &m.Attempts[len(m.Attempts)-1]
}

// Filter selects mails for List. Zero fields match everything.
type Filter struct {
	State  State
	Kind   string
	Ref    string
	To     string // exact address, compared lower-cased
	Limit  int    // default 50
	Offset int
}

// Stats summarises the queue for a dashboard.
type Stats struct {
	Pending        int `json:"pending"`
	Sent           int `json:"sent"`
	Failed         int `json:"failed"`
	FailedAttempts int `json:"failed_attempts_24h"` // unsuccessful attempts in the last 24 hours
}

// Options configure a Queue.
type Options struct {
	Sender Sender // required
	From   string // From header and envelope sender, e.g. "Herald <herald@example.org>"
	// Connections is how many mails are sent at once (smtp.connections):
	// each send takes a connection of its own from the Sender. Default 1.
	Connections int
	// Now and NewMessageID are injectable for golden tests.
	Now          func() time.Time
	NewMessageID func() string // "<id@domain>"; default: random with From's domain
	// Backoff after the n-th failed attempt is MinBackoff·2^(n-1), at most MaxBackoff.
	MinBackoff time.Duration // default 30 s, or MaxBackoff if that is less
	MaxBackoff time.Duration // default 1 h
	// KindMaxBackoff lowers MaxBackoff for mail of a kind (e.g. "validation",
	// whose code is wanted within minutes); it also lowers the first wait
	// when it is below MinBackoff.
	KindMaxBackoff map[string]time.Duration
	// A mail that keeps failing temporarily becomes Failed after MaxAttempts
	// attempts (0: no limit) or GiveUpAfter since it was queued or retried
	// (default 48 h).
	MaxAttempts int
	GiveUpAfter time.Duration
	// SendTimeout bounds one Send. Default 2 min.
	SendTimeout time.Duration
	// Retention deletes sent and failed mail (with its history) this long
	// after it was queued. 0 keeps it forever.
	Retention time.Duration
	// OnSend, if set, is told the outcome of every recorded attempt (after
	// its transaction commits): result "sent", "deferred" (tried again
	// later) or "failed" (given up), and the SMTP reply class (ReplyClass).
	// Metrics count these.
	OnSend func(result, replyClass string)
}

var (
	// ErrNotFound: no mail with that id.
	ErrNotFound = errors.New("mailer: no such mail")
	// ErrState: the action does not apply to the mail's state.
	ErrState = errors.New("mailer: not possible in this state")
)

// The outbox is the queue named "outbox" (queue.Bolt's buckets on bbolt,
// pgqueue's tables on PostgreSQL), plus two indexes of its own, by ref and
// by lower-cased recipient, kept in the same transactions (outboxIndex).

// outboxIndex is the outbox's own index of its mail by ref and by
// recipient: bbolt buckets (queue_bolt.go) or PostgreSQL tables
// (queue_pg.go).
type outboxIndex interface {
	// add indexes mail id under ref (if not empty) and to (lower-cased).
	add(tx *store.Tx, ref, to string, id uint64) error
	remove(tx *store.Tx, ref, to string, id uint64) error
	// ids returns, newest first, the mail indexed under ref (when ref is
	// set) or else under the recipient to.
	ids(ctx context.Context, ref, to string) ([]uint64, error)
	// idsTx is ids of the recipient to inside tx.
	idsTx(tx *store.Tx, to string) ([]uint64, error)
}

// meta is what the outbox keeps of a mail besides the queue's record.
type meta struct {
	To        string
	Subject   string
	Ref       string
	MessageID string
}

// storedMeta is meta as stored: one-letter keys, which every queued and sent
// mail keeps for as long as it is retained (about 20 bytes less per mail
// than the names). Mail queued before reads with the long names, still
// accepted.
type storedMeta struct {
	T string `json:"t,omitempty"`
	S string `json:"s,omitempty"`
	R string `json:"r,omitempty"`
	M string `json:"m,omitempty"`
	// The names written before the one-letter keys.
	To        string `json:"to,omitempty"`
	Subject   string `json:"subject,omitempty"`
	Ref       string `json:"ref,omitempty"`
	MessageID string `json:"message_id,omitempty"`
}

// encodeMeta writes md with one-letter keys.
func encodeMeta(md meta) ([]byte, error) {
	return json.Marshal(storedMeta{T: md.To, S: md.Subject, R: md.Ref, M: md.MessageID})
}

// decodeMeta reads md in either form; fields it cannot read are empty.
// The worker reads a mail's meta several times per send: the form
// encodeMeta writes is read without encoding/json when no value holds an
// escape (decodeMetaFast), which TestDecodeMetaFastAgrees checks.
func decodeMeta(b []byte) meta {
	if md, ok := decodeMetaFast(b); ok {
		return md
	}
	var s storedMeta
	_ = json.Unmarshal(b, &s)
	pick := func(short, long string) string {
		if short != "" {
			return short
		}
		return long
	}
	return meta{To: pick(s.T, s.To), Subject: pick(s.S, s.Subject), Ref: pick(s.R, s.Ref), MessageID: pick(s.M, s.MessageID)}
}

// decodeMetaFast reads {"t":"..","s":"..","r":"..","m":".."} (each
// optional, in that order), as encodeMeta writes it, when no value holds a
// backslash other than those of <, > and &, a control character or invalid
// UTF-8; ok is false otherwise.
func decodeMetaFast(b []byte) (md meta, ok bool) {
	if len(b) < 2 || b[0] != '{' || b[len(b)-1] != '}' {
		return md, false
	}
	b = b[1 : len(b)-1]
	order := "tsrm"
	for len(b) > 0 {
		if len(b) < 6 || b[0] != '"' || b[2] != '"' || b[3] != ':' || b[4] != '"' {
			return md, false
		}
		i := strings.IndexByte(order, b[1])
		if i < 0 {
			return md, false
		}
		key := order[i]
		order = order[i+1:]
		b = b[5:]
		end := bytes.IndexByte(b, '"')
		if end < 0 {
			return md, false
		}
		v, escaped := b[:end], false
		for _, c := range v {
			if c < 0x20 {
				return md, false
			}
			escaped = escaped || c == '\\'
		}
		if !utf8.Valid(v) {
			return md, false
		}
		str := string(v)
		if escaped {
			// encoding/json writes <, > and & as \u003c, \u003e and
			// \u0026 (a Message-ID always has two); other escapes go the
			// slow way.
			str = jsonHTMLEscapes.Replace(str)
			if strings.IndexByte(str, '\\') >= 0 {
				return md, false
			}
		}
		switch key {
		case 't':
			md.To = str
		case 's':
			md.Subject = str
		case 'r':
			md.Ref = str
		case 'm':
			md.MessageID = str
		}
		b = b[end+1:]
		if len(b) > 0 {
			if b[0] != ',' || len(b) == 1 {
				return md, false
			}
			b = b[1:]
		}
	}
	return md, true
}

var jsonHTMLEscapes = strings.NewReplacer(`\u003c`, "<", `\u003e`, ">", `\u0026`, "&")

// Queue is the durable outbox: a queue.Queue whose deliver function sends
// through the Sender and classifies SMTP replies.
type Queue struct {
	db   *store.DB
	be   queue.Backend
	bolt *queue.Bolt // the bbolt backend (nil on PostgreSQL), for convertLegacy
	idx  outboxIndex
	q    *queue.Queue
	opts Options
	log  *slog.Logger
	from string // the envelope sender

	renderMu  sync.RWMutex
	renderers map[string]Renderer // by kind (render.go)
}

// Open creates the outbox's buckets (on bbolt; its PostgreSQL tables come
// with the migrations) and returns the queue. Run starts the worker.
func Open(db *store.DB, opts Options, log *slog.Logger) (*Queue, error) {
	if opts.Sender == nil {
		return nil, errors.New("mailer: Options.Sender is required")
	}
	a, err := mail.ParseAddress(opts.From)
	if err != nil {
		return nil, fmt.Errorf("mailer: From %q: %w", opts.From, err)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.NewMessageID == nil {
		from := opts.From
		opts.NewMessageID = func() string { return NewMessageID(from) }
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 30 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mq := &Queue{db: db, opts: opts, log: log.With("component", "mailer"), from: a.Address}
	if err := mq.openStorage(); err != nil {
		return nil, err
	}
	mq.q, err = queue.New(mq.be, queue.Options{
		Name:           "mailer",
		Deliver:        mq.deliver,
		Workers:        max(opts.Connections, 1),
		MinBackoff:     opts.MinBackoff,
		MaxBackoff:     opts.MaxBackoff,
		KindMaxBackoff: opts.KindMaxBackoff,
		MaxAttempts:    opts.MaxAttempts,
		GiveUpAfter:    opts.GiveUpAfter,
		AttemptTimeout: opts.SendTimeout,
		TrimDone:       true,
		Retention:      opts.Retention,
		OnDelete:       mq.unindex,
		OnRecord:       mq.recorded,
		Now:            opts.Now,
		Log:            log,
	})
	if err != nil {
		return nil, err
	}
	if err := mq.convertLegacy(); err != nil {
		return nil, err
	}
	return mq, nil
}

// Compose composes m with the queue's From, clock and Message-ID generator.
func (q *Queue) Compose(m Message) ([]byte, error) {
	return Compose(m, q.opts.From, q.opts.Now(), q.opts.NewMessageID())
}

// Prepared is a composed message ready to be stored by EnqueuePrepared. It
// holds no transaction state, so one Prepared may be enqueued again (bbolt's
// Batch may run its function twice). Ref may be changed before enqueueing:
// it is not part of the composed bytes.
type Prepared struct {
	To        string // the parsed recipient
	Subject   string // as the console shows it (capped)
	Kind      string
	Ref       string
	MessageID string
	Raw       []byte // the composed RFC 5322 message
	packed    []byte // Raw compressed, as stored
	// packedMeta is the To, Subject and MessageID that packed (format 3)
	// leaves to the mail's meta: if a caller changed them, Raw is stored.
	packedMeta meta
}

// Prepare parses and composes m (recipient check, MIME composition,
// Message-ID and Date) and compresses it, without touching storage. Compose
// outside the write transaction, then store the result with EnqueuePrepared
// inside it: the single bbolt writer then spends its time only on the writes.
func (q *Queue) Prepare(m Message) (*Prepared, error) {
	to, err := ParseRecipient(m.To)
	if err != nil {
		return nil, err
	}
	m.To = to
	mid := q.opts.NewMessageID()
	date := q.opts.Now()
	raw, err := Compose(m, q.opts.From, date, mid)
	if err != nil {
		return nil, err
	}
	subject := CapSubject(m.Subject)
	var packed []byte
	if m.Raw != nil {
		subject = rawSubject(raw)
		packed, err = pack(raw)
	} else {
		packed, err = packMessage(m, q.opts.From, date)
	}
	if m.Raw != nil {
		mid = rawHeader(raw, "Message-ID")
	}
	if err != nil {
		return nil, err
	}
	p := &Prepared{To: to, Subject: subject, Kind: m.Kind, Ref: m.Ref, MessageID: mid, Raw: raw, packed: packed}
	p.packedMeta = meta{To: p.To, Subject: p.Subject, MessageID: p.MessageID}
	return p, nil
}

// Enqueue composes m and stores it as pending inside tx, the caller's write
// transaction, so the mail exists if and only if the caller's change commits.
// It sends nothing: call Wake after the commit. Callers on a hot path should
// Prepare before the transaction and call EnqueuePrepared inside it.
func (q *Queue) Enqueue(tx *store.Tx, m Message) (uint64, error) {
	p, err := q.Prepare(m)
	if err != nil {
		return 0, err
	}
	return q.EnqueuePrepared(tx, p)
}

// EnqueuePrepared stores p as pending inside tx, the caller's write
// transaction (see Enqueue). It only writes: it does not change p, so it is
// safe in a bbolt Batch function, which may run more than once.
func (q *Queue) EnqueuePrepared(tx *store.Tx, p *Prepared) (uint64, error) {
	md, err := encodeMeta(meta{To: p.To, Subject: p.Subject, Ref: p.Ref, MessageID: p.MessageID})
	if err != nil {
		return 0, err
	}
	data := p.packed
	if data != nil && data[0] == formatComposeDictV2 && p.packedMeta != (meta{To: p.To, Subject: p.Subject, MessageID: p.MessageID}) {
		data = nil
	}
	if data == nil {
		if data, err = pack(p.Raw); err != nil {
			return 0, err
		}
	}
	r := &queue.Record{Kind: p.Kind, Meta: md, Data: data}
	if err := q.q.Enqueue(tx, r); err != nil {
		return 0, err
	}
	return r.ID, q.index(tx, r)
}

// index writes a mail's own index entries: by ref and by recipient.
func (q *Queue) index(tx *store.Tx, r *queue.Record) error {
	m := toMail(r)
	return q.idx.add(tx, m.Ref, strings.ToLower(m.To), m.ID)
}

// unindex removes a deleted mail's own index entries (queue.Options.OnDelete).
func (q *Queue) unindex(tx queue.Tx, r *queue.Record) error {
	m := toMail(r)
	return q.idx.remove(tx.(*store.Tx), m.Ref, strings.ToLower(m.To), m.ID)
}

func rawSubject(raw []byte) string {
	s := rawHeader(raw, "Subject")
	if d, err := new(mime.WordDecoder).DecodeHeader(s); err == nil {
		s = d
	}
	return CapSubject(s)
}

func rawHeader(raw []byte, name string) string {
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return ""
	}
	return msg.Header.Get(name)
}

// pack compresses a composed message for storage with DEFLATE, primed with
// a dictionary (dict/v1.eml: the default invite mail with its tokens, keys
// and addresses blanked out). Most of a mail is its templates' boilerplate
// (MIME headers, the quoted-printable HTML part), which the dictionary
// already holds: an invite mail of 5.6 KB takes about 480 bytes instead of
// 1.9 KB without it. Other mails (validation, custom templates) share the
// headers and much of the markup and are never larger than plain DEFLATE
// by more than a few bytes. Compressors are reused (each holds about 600 KB
// of state).
func pack(raw []byte) ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte(formatDeflateDictV1)
	w, _ := flaters.Get().(*flate.Writer)
	if w == nil {
		var err error
		if w, err = flate.NewWriterDict(&b, flate.DefaultCompression, dictV1); err != nil {
			return nil, err
		}
	} else {
		w.Reset(&b) // keeps the dictionary
	}
	defer flaters.Put(w)
	if _, err := w.Write(raw); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// Stored message formats, the first byte of the stored body. A format, and
// the dictionary it names, never changes once released: mail queued by an
// older Herald is read with it.
const (
	formatDeflate       = 1 // DEFLATE
	formatDeflateDictV1 = 2 // DEFLATE with dictV1
	// formatComposeDictV2 = 3: Compose's inputs, DEFLATE with dictV2 (packmsg.go)
)

// dictV1 is the dictionary of formatDeflateDictV1. Its SHA-256 is fixed by
// TestMailDictionaryNeverChanges.
//
//go:embed dict/v1.eml
var dictV1 []byte

var flaters sync.Pool

// unpackRecord reads the body of r, a mail of the outbox.
func (q *Queue) unpackRecord(r *queue.Record) ([]byte, error) {
	if len(r.Data) > 0 {
		switch r.Data[0] {
		case formatComposeDictV2:
			return unpackMessage(r.Data[1:], decodeMeta(r.Meta))
		case formatRendered:
			return q.render(r, r.Data[1:])
		}
	}
	return unpack(r.Data)
}

// unpack reads a stored body of format 1 or 2.
func unpack(data []byte) ([]byte, error) {
	if len(data) == 0 {
		return nil, nil
	}
	var dict []byte
	switch data[0] {
	case formatDeflate:
	case formatDeflateDictV1:
		dict = dictV1
	default:
		return nil, fmt.Errorf("mailer: stored message in unknown format %d", data[0])
	}
	// Decompressors are reused too: each holds about 40 KB of state, which
	// the worker would otherwise allocate for every mail it sends.
	src := bytes.NewReader(data[1:])
	r, _ := inflaters.Get().(io.ReadCloser)
	if r == nil {
		r = flate.NewReaderDict(src, dict)
	} else if err := r.(flate.Resetter).Reset(src, dict); err != nil {
		return nil, err
	}
	defer inflaters.Put(r)
	return io.ReadAll(r)
}

var inflaters sync.Pool

// Wake tells the worker to look at the queue now. Call it after the
// transaction that enqueued mail commits. It never blocks.
func (q *Queue) Wake() { q.q.Wake() }

// Run is the worker: it sends due mail in next-attempt order, up to
// Connections at once, records the attempts (grouped: each commit takes the
// outcomes that arrived while the previous one was written), sleeps until the
// next one is due or Wake is called, and returns nil when ctx is done.
// Pending mail from before a restart is picked up at once. If the Sender has
// a Close method it is called on return.
func (q *Queue) Run(ctx context.Context) error {
	if c, ok := q.opts.Sender.(interface{ Close() error }); ok {
		// Closed when Run ends, not while a panic unwinds it: the server
		// runs Run again after a panic (internal/background), with the
		// same sender.
		defer func() {
			if r := recover(); r != nil {
				panic(r)
			}
			c.Close()
		}()
	}
	// On PostgreSQL, while this worker runs, mail enqueued in this process
	// wakes it after the commit instead of a NOTIFY to every replica
	// (pgqueue.Backend.SetLocalWake).
	if lw, ok := q.be.(interface{ SetLocalWake(func()) }); ok {
		lw.SetLocalWake(q.Wake)
		defer lw.SetLocalWake(nil)
	}
	return q.q.Run(ctx)
}

// deliver sends one mail once and classifies the reply: 4xx and network
// errors are temporary, 5xx and PermanentErrors are not.
func (q *Queue) deliver(ctx context.Context, r *queue.Record) queue.Outcome {
	m := toMail(r)
	raw, err := q.unpackRecord(r)
	switch {
	case err != nil && ctx.Err() != nil:
		// A mail rendered at send time may have read a closing database.
		return queue.Outcome{Class: queue.Abandon}
	case errors.Is(err, ErrWithdrawn):
		return queue.Outcome{Class: queue.Cancel, Reply: err.Error(), Label: "none"}
	case err != nil:
		return queue.Outcome{Class: queue.Permanent, Reply: err.Error(), Label: "none"}
	}
	reply := "250 OK"
	var sendErr error
	if rs, ok := q.opts.Sender.(ReplySender); ok {
		var rp string
		if rp, sendErr = rs.SendReply(ctx, q.from, []string{m.To}, raw); rp != "" {
			reply = rp
		}
	} else {
		sendErr = q.opts.Sender.Send(ctx, q.from, []string{m.To}, raw)
	}
	switch {
	case sendErr == nil:
		return queue.Outcome{Class: queue.OK, Reply: reply, Label: ReplyClass(nil)}
	case ctx.Err() != nil && Temporary(sendErr):
		return queue.Outcome{Class: queue.Abandon}
	case Temporary(sendErr):
		return queue.Outcome{Class: queue.Temporary, Reply: sendErr.Error(), Label: ReplyClass(sendErr)}
	}
	return queue.Outcome{Class: queue.Permanent, Reply: sendErr.Error(), Label: ReplyClass(sendErr)}
}

// recorded logs and counts an attempt once its record is committed.
func (q *Queue) recorded(r *queue.Record, o queue.Outcome) {
	m := toMail(r)
	result := "deferred"
	switch m.State {
	case Sent:
		result = "sent"
	case Failed:
		result = "failed"
	}
	if q.opts.OnSend != nil {
		q.opts.OnSend(result, o.Label)
	}
	attrs := []any{"id", m.ID, "kind", m.Kind, "to", matrix.RedactEmail(m.To), "attempt", len(m.Attempts)}
	switch m.State {
	case Sent:
		q.log.Info("mail sent", attrs...)
	case Failed:
		q.log.Warn("mail failed", append(attrs, "reply", o.Reply)...)
	default:
		q.log.Info("mail deferred", append(attrs, "reply", o.Reply, "next_attempt", m.NextAttempt)...)
	}
}

func toMail(r *queue.Record) Mail {
	md := decodeMeta(r.Meta) // written by EnqueuePrepared; empty fields if not
	st := State(r.State)
	switch r.State {
	case queue.Done:
		st = Sent
	case queue.Cancelled:
		st = Failed
	}
	m := Mail{ID: r.ID, To: md.To, Subject: md.Subject, Kind: r.Kind, Ref: md.Ref, MessageID: md.MessageID,
		State: st, Created: r.Created, NextAttempt: r.NextAttempt, Attempts: r.Attempts, LastError: r.LastError,
		RetryFrom: r.RetryFrom, RetryBase: r.RetryBase}
	if m.Attempts == nil {
		m.Attempts = []Attempt{}
	}
	return m
}

func mailErr(err error) error { return queue.MapErr(err, ErrNotFound, ErrState) }

// Get returns one mail, with its composed bytes until it is sent. A mail
// rendered at send time (PrepareRendered) is rendered for Get too; when its
// Renderer cannot render it (the mail failed or will fail for that reason,
// in its timeline), Raw is nil.
func (q *Queue) Get(id uint64) (Mail, error) {
	r, err := q.q.Get(context.Background(), id)
	if err != nil {
		return Mail{}, mailErr(err)
	}
	m := toMail(r)
	if m.Raw, err = q.unpackRecord(r); err != nil && r.Data[0] == formatRendered {
		return m, nil
	} else if err != nil {
		return m, err
	}
	return m, nil
}

// State reads only mail id's state (neither its payload nor its history
// decoded into a Mail), for callers that need nothing else: the console
// asks it of every pending invite's email.
func (q *Queue) State(id uint64) (State, error) {
	var st State
	err := q.db.View(func(tx *store.Tx) error {
		r, err := q.be.Read(tx, id, false)
		if err != nil {
			return err
		}
		st = toMail(r).State
		return nil
	})
	return st, mailErr(err)
}

// List returns mail matching f, newest first, without Raw. A filter on the
// state alone pages through the queue's state index; Ref and To go through
// the outbox's own indexes.
func (q *Queue) List(f Filter) ([]Mail, error) {
	if f.Limit <= 0 {
		f.Limit = 50
	}
	if f.Ref == "" && f.To == "" && f.Kind == "" {
		st := queue.State(f.State)
		if f.State == Sent {
			st = queue.Done
		}
		rs, err := q.q.List(context.Background(), queue.Page{State: st, Offset: f.Offset, Limit: f.Limit})
		out := make([]Mail, 0, len(rs))
		for i := range rs {
			out = append(out, toMail(&rs[i]))
		}
		return out, err
	}
	var out []Mail
	skip := f.Offset
	for m := range q.candidates(f) {
		if (f.State != "" && m.State != f.State) || (f.Kind != "" && m.Kind != f.Kind) ||
			(f.Ref != "" && m.Ref != f.Ref) || (f.To != "" && !strings.EqualFold(m.To, f.To)) {
			continue
		}
		if skip > 0 {
			skip--
			continue
		}
		out = append(out, m)
		if len(out) >= f.Limit {
			break
		}
	}
	return out, nil
}

// candidates yields mail, newest first, from the most selective index: the
// outbox's own for Ref and To (an address or a ref has few mails), else the
// queue's pages.
func (q *Queue) candidates(f Filter) iter.Seq[Mail] {
	return func(yield func(Mail) bool) {
		if f.Ref != "" || f.To != "" {
			ids, _ := q.idx.ids(context.Background(), f.Ref, strings.ToLower(f.To))
			for _, id := range ids {
				r, err := q.be.Get(context.Background(), id)
				if err == nil && !yield(toMail(r)) {
					return
				}
			}
			return
		}
		st := queue.State(f.State)
		if f.State == Sent {
			st = queue.Done
		}
		var before uint64
		for {
			rs, err := q.q.List(context.Background(), queue.Page{State: st, Before: before, Limit: 200})
			if err != nil || len(rs) == 0 {
				return
			}
			for i := range rs {
				if !yield(toMail(&rs[i])) {
					return
				}
			}
			before = rs[len(rs)-1].ID
		}
	}
}

// ByRef returns every mail queued with ref, newest first.
func (q *Queue) ByRef(ref string) ([]Mail, error) {
	if ref == "" {
		return nil, nil
	}
	return q.List(Filter{Ref: ref, Limit: math.MaxInt})
}

// Retry makes failed (or pending) mail due now with a fresh retry budget,
// all or none (one transaction). A sent mail is ErrState: nothing is sent
// again after a recorded success.
func (q *Queue) Retry(ids ...uint64) error {
	return mailErr(q.q.Retry(context.Background(), ids...))
}

// Drop deletes mail and its history, whatever its state, all or none.
func (q *Queue) Drop(ids ...uint64) error {
	return mailErr(q.q.Delete(context.Background(), ids...))
}

// Stats counts mail by state and failed attempts in the last 24 hours.
func (q *Queue) Stats() (Stats, error) {
	c, err := q.q.Stats(context.Background())
	return Stats{Pending: c.Pending, Sent: c.Done, Failed: c.Failed + c.Cancelled, FailedAttempts: c.FailedAttempts}, err
}

// DeleteByRecipient deletes every mail to addr (compared lower-cased) with its
// history, for data-protection erasure, and returns how many it deleted.
func (q *Queue) DeleteByRecipient(addr string) (int, error) {
	to := strings.ToLower(strings.TrimSpace(addr))
	n := 0
	err := q.db.Update(func(tx *store.Tx) error {
		n = 0
		ids, err := q.idx.idsTx(tx, to)
		if err != nil {
			return err
		}
		if err := q.q.DeleteTx(tx, ids...); err != nil {
			return err
		}
		n = len(ids)
		return nil
	})
	return n, err
}
