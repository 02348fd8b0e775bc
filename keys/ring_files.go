package keys

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// fileRing is the ring in data_dir/keys: one JWK file (mode 0600) per key
// and ring.json recording which is current and which are retired. It is the
// layout of bbolt deployments (one process, one data dir); `herald keys`
// commands write the files while Herald runs, and the server notices
// ring.json's modification time change.
type fileRing struct {
	dir string
}

type ringFile struct {
	Current string               `json:"current"`
	Keys    map[string]ringEntry `json:"keys"`
}

type ringEntry struct {
	Created time.Time `json:"created"`
	Retired time.Time `json:"retired,omitzero"`
}

func (f *fileRing) where() string { return f.ringPath() }

func (f *fileRing) ringPath() string { return filepath.Join(f.dir, "ring.json") }

func (f *fileRing) keyPath(id string) string {
	return filepath.Join(f.dir, strings.ReplaceAll(id, ":", "_")+".jwk")
}

func (f *fileRing) readRingFile() (ringFile, time.Time, error) {
	var rf ringFile
	st, err := os.Stat(f.ringPath())
	if err != nil {
		return rf, time.Time{}, fmt.Errorf("keys: %w", err)
	}
	raw, err := os.ReadFile(f.ringPath())
	if err != nil {
		return rf, time.Time{}, fmt.Errorf("keys: %w", err)
	}
	if err := json.Unmarshal(raw, &rf); err != nil {
		return rf, time.Time{}, fmt.Errorf("keys: %s: %w", f.ringPath(), err)
	}
	return rf, st.ModTime(), nil
}

func (f *fileRing) save(rf ringFile) error {
	raw, err := json.MarshalIndent(rf, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(f.ringPath(), raw)
}

func (f *fileRing) read(context.Context) ([]*Key, string, error) {
	rf, mt, err := f.readRingFile()
	if err != nil {
		return nil, "", err
	}
	ids := make([]string, 0, len(rf.Keys))
	for id := range rf.Keys {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	out := make([]*Key, 0, len(ids))
	for _, id := range ids {
		e := rf.Keys[id]
		priv, err := readJWK(f.keyPath(id), id)
		if err != nil {
			return nil, "", err
		}
		out = append(out, &Key{ID: id, Private: priv, Public: priv.Public().(ed25519.PublicKey), Created: e.Created, Retired: e.Retired, Current: id == rf.Current})
	}
	return out, mt.String(), nil
}

func (f *fileRing) stamp(context.Context) (string, error) {
	st, err := os.Stat(f.ringPath())
	if err != nil {
		return "", err
	}
	return st.ModTime().String(), nil
}

func (f *fileRing) rotate(_ context.Context, k Key) error {
	if err := writeJWK(f.keyPath(k.ID), k.ID, k.Private); err != nil {
		return err
	}
	rf := ringFile{Keys: map[string]ringEntry{}}
	if _, err := os.Stat(f.ringPath()); err == nil {
		if rf, _, err = f.readRingFile(); err != nil {
			return err
		}
	}
	rf.Keys[k.ID] = ringEntry{Created: k.Created}
	rf.Current = k.ID
	return f.save(rf)
}

func (f *fileRing) retire(_ context.Context, id string, t time.Time) error {
	rf, _, err := f.readRingFile()
	if err != nil {
		return err
	}
	e, ok := rf.Keys[id]
	if !ok {
		return ErrUnknownKey
	}
	if rf.Current == id {
		return errCurrentKey
	}
	if !e.Retired.IsZero() {
		return nil
	}
	e.Retired = t
	rf.Keys[id] = e
	return f.save(rf)
}

func (f *fileRing) add(_ context.Context, k Key) (bool, error) {
	rf, _, err := f.readRingFile()
	if err != nil {
		return false, err
	}
	if _, ok := rf.Keys[k.ID]; ok {
		return false, nil
	}
	if err := writeJWK(f.keyPath(k.ID), k.ID, k.Private); err != nil {
		return false, err
	}
	rf.Keys[k.ID] = ringEntry{Created: k.Created}
	return true, f.save(rf)
}

var _ ringStore = (*fileRing)(nil)
