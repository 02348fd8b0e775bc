package mailer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/herald-im/herald/queue"
)

// formatRendered stores no message at all: only its Date and what the
// mail's owner gave PrepareRendered (for an invite, the version of the
// templates it was queued with). The kind's Renderer renders the message
// again from the owner's own records when it is sent or shown, and it is
// composed with the mail's meta (recipient, Message-ID) and that Date. An
// invite mail's body was the largest part of a queued invite (its token and
// ephemeral key stored a second time, with the rendered templates), and
// rendering, composing and compressing it in the request was a third of
// store-invite's CPU.
const formatRendered = 4

// Renderer renders, at send time, a mail of its kind queued with
// PrepareRendered: ref is the mail's Ref, data what PrepareRendered was
// given. It fills Subject, Text, HTML and Headers (or Raw); To, From, Date
// and Message-ID are the queued mail's. An error wrapping ErrWithdrawn
// means there is nothing to send any more (the record it was rendered from
// is gone): the mail is cancelled. Any other error fails the mail.
type Renderer func(ref string, data []byte) (Message, error)

// ErrWithdrawn: a mail's Renderer has nothing to send any more.
var ErrWithdrawn = errors.New("mailer: nothing to send any more")

// SetRenderer sets the Renderer of mail of kind (before Run; the owner of
// that kind sets it when it is built).
func (q *Queue) SetRenderer(kind string, r Renderer) {
	q.renderMu.Lock()
	defer q.renderMu.Unlock()
	if q.renderers == nil {
		q.renderers = map[string]Renderer{}
	}
	q.renderers[kind] = r
}

func (q *Queue) renderer(kind string) Renderer {
	q.renderMu.RLock()
	defer q.renderMu.RUnlock()
	return q.renderers[kind]
}

// PrepareRendered is Prepare for a mail rendered at send time by its
// kind's Renderer: m needs To, Kind, Ref and the Subject the console shows
// (the body is not rendered now); data (small) is kept for the Renderer.
// Date and Message-ID are fixed now, as Prepare fixes them.
func (q *Queue) PrepareRendered(m Message, data []byte) (*Prepared, error) {
	to, err := ParseRecipient(m.To)
	if err != nil {
		return nil, err
	}
	if q.renderer(m.Kind) == nil {
		return nil, fmt.Errorf("mailer: no renderer for mail of kind %q", m.Kind)
	}
	if err := checkSubject(m.Subject); err != nil {
		return nil, err
	}
	mid := q.opts.NewMessageID()
	if err := CheckHeaderValue(mid); err != nil {
		return nil, err
	}
	date := q.opts.Now()
	_, off := date.Zone()
	b := make([]byte, 0, 1+2*binary.MaxVarintLen64+len(data))
	b = append(b, formatRendered)
	b = binary.AppendVarint(b, date.Unix())
	b = binary.AppendVarint(b, int64(off))
	b = append(b, data...)
	return &Prepared{To: to, Subject: CapSubject(m.Subject), Kind: m.Kind, Ref: m.Ref, MessageID: mid, packed: b}, nil
}

// render composes a formatRendered mail (data without its format byte).
func (q *Queue) render(r *queue.Record, data []byte) ([]byte, error) {
	sec, n := binary.Varint(data)
	if n <= 0 {
		return nil, errStoredMessage
	}
	data = data[n:]
	off, n := binary.Varint(data)
	if n <= 0 {
		return nil, errStoredMessage
	}
	data = data[n:]
	fn := q.renderer(r.Kind)
	if fn == nil {
		return nil, fmt.Errorf("mailer: no renderer for mail of kind %q", r.Kind)
	}
	md := decodeMeta(r.Meta)
	m, err := fn(md.Ref, data)
	if err != nil {
		return nil, err
	}
	m.To = md.To
	return Compose(m, q.opts.From, time.Unix(sec, 0).In(time.FixedZone("", int(off))), md.MessageID)
}
