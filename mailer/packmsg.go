package mailer

import (
	"bytes"
	"compress/flate"
	_ "embed"
	"encoding/binary"
	"errors"
	"io"
	"sort"
	"sync"
	"time"
)

// formatComposeDictV2 stores a mail as the inputs of Compose (From, Date,
// text and HTML parts, extra headers), DEFLATE-compressed with dictV2, and
// composes it again when it is read. The recipient, the subject and the
// Message-ID are not stored twice: they are the mail's meta, which the
// outbox keeps anyway (the subject there is capped as Compose caps it).
// Compose is deterministic (the multipart boundary is derived from the
// Message-ID, headers are written in sorted order), so the bytes sent are
// the ones composed when the mail was queued. The text and HTML are stored
// before quoted-printable encoding, whose soft line breaks fall elsewhere
// in every mail and cut DEFLATE's matches against the dictionary: an invite
// mail takes about 200 bytes instead of about 480 as format 2.
//
// Mail from an operator's raw template (Message.Raw) keeps format 2: its
// bytes are the operator's.
const formatComposeDictV2 = 3

// dictV2 is the dictionary of formatComposeDictV2: the header names Herald
// adds and the subject, List-Unsubscribe value, text and HTML of the default
// invite mail (dict/v1.eml decoded), tokens and addresses blanked. Its
// SHA-256 is fixed by TestMailDictionaryNeverChanges.
//
//go:embed dict/v2.txt
var dictV2 []byte

// packMessage stores m (already checked by Compose) for formatComposeDictV2;
// m.To, m.Subject and the Message-ID are left to the mail's meta.
func packMessage(m Message, from string, date time.Time) ([]byte, error) {
	var enc []byte
	str := func(s string) {
		enc = binary.AppendUvarint(enc, uint64(len(s)))
		enc = append(enc, s...)
	}
	_, off := date.Zone()
	enc = binary.AppendVarint(enc, date.Unix())
	enc = binary.AppendVarint(enc, int64(off))
	str(from)
	names := make([]string, 0, len(m.Headers))
	for k := range m.Headers {
		names = append(names, k)
	}
	sort.Strings(names)
	enc = binary.AppendUvarint(enc, uint64(len(names)))
	for _, k := range names {
		str(k)
		str(m.Headers[k])
	}
	str(m.Text)
	str(m.HTML)

	var b bytes.Buffer
	b.WriteByte(formatComposeDictV2)
	w, _ := flatersV2.Get().(*flate.Writer)
	if w == nil {
		var err error
		if w, err = flate.NewWriterDict(&b, flate.DefaultCompression, dictV2); err != nil {
			return nil, err
		}
	} else {
		w.Reset(&b) // keeps the dictionary
	}
	defer flatersV2.Put(w)
	if _, err := w.Write(enc); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

var flatersV2 sync.Pool

var errStoredMessage = errors.New("mailer: stored message is truncated")

// unpackMessage reads formatComposeDictV2 (data without its format byte)
// and composes the message with md's recipient, subject and Message-ID.
func unpackMessage(data []byte, md meta) ([]byte, error) {
	src := bytes.NewReader(data)
	r, _ := inflaters.Get().(io.ReadCloser)
	if r == nil {
		r = flate.NewReaderDict(src, dictV2)
	} else if err := r.(flate.Resetter).Reset(src, dictV2); err != nil {
		return nil, err
	}
	enc, err := io.ReadAll(r)
	inflaters.Put(r)
	if err != nil {
		return nil, err
	}
	bad := false
	num := func() int64 {
		v, n := binary.Varint(enc)
		if n <= 0 {
			bad = true
			return 0
		}
		enc = enc[n:]
		return v
	}
	str := func() string {
		l, n := binary.Uvarint(enc)
		if n <= 0 || uint64(len(enc)-n) < l {
			bad = true
			enc = nil
			return ""
		}
		s := string(enc[n : n+int(l)])
		enc = enc[n+int(l):]
		return s
	}
	sec := num()
	off := num()
	m := Message{To: md.To, Subject: md.Subject}
	from := str()
	l, n := binary.Uvarint(enc)
	if n <= 0 || l > uint64(len(enc)) {
		return nil, errStoredMessage
	}
	enc = enc[n:]
	if l > 0 {
		m.Headers = make(map[string]string, l)
		for range l {
			k := str()
			m.Headers[k] = str()
		}
	}
	m.Text = str()
	m.HTML = str()
	if bad {
		return nil, errStoredMessage
	}
	date := time.Unix(sec, 0).In(time.FixedZone("", int(off)))
	return Compose(m, from, date, md.MessageID)
}
