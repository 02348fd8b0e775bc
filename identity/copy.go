package identity

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/herald-im/herald/store"
)

// CopyStorage copies every identity record from src to dst (`herald
// migrate-storage`: a bbolt data directory to an empty PostgreSQL database,
// or the other way), kind by kind in key order, at most store.CopyBatch records
// per destination transaction; dst's identity tables must be empty. The
// pepper is copied with the hash index made with it, so lookups answer on
// dst as they did on src. progress, if not nil, is called after each batch
// with the number of records it copied.
func CopyStorage(ctx context.Context, src, dst *store.DB, progress func(n int)) error {
	from, to := newStorage(src), newStorage(dst)
	if err := to.setup(dst); err != nil {
		return err
	}
	for _, kind := range recordKinds {
		var after []byte
		for {
			type rec struct {
				key []byte
				v   any
			}
			var batch []rec
			err := src.ViewContext(ctx, func(tx *store.Tx) error {
				batch = batch[:0]
				return from.scan(tx, kind, after, store.CopyBatch, func(k []byte, v any) error {
					batch = append(batch, rec{k, v})
					return nil
				})
			})
			if err != nil {
				return fmt.Errorf("identity: copy %s: read: %w", kind, err)
			}
			if len(batch) == 0 {
				break
			}
			err = dst.UpdateContext(ctx, func(tx *store.Tx) error {
				var hashes []hashEntry
				for _, r := range batch {
					var err error
					switch v := r.v.(type) {
					case *pepperInfo:
						err = to.setPepper(tx, v, false)
					case Binding:
						err = to.putBinding(tx, &v)
					case Account:
						err = to.putAccount(tx, r.key, &v)
					case map[string]bool:
						err = to.putTerms(tx, string(r.key), v)
					case Session:
						err = to.putSession(tx, &v)
					case string:
						if kind == kindHashes {
							var h [32]byte
							if len(r.key) != 32 {
								continue // not a hash: lookups never find it anyway
							}
							copy(h[:], r.key)
							hashes = append(hashes, hashEntry{h, v})
						} else {
							err = to.putSessionKey(tx, r.key, v)
						}
					}
					if err != nil {
						return err
					}
				}
				if len(hashes) > 0 {
					return to.putHashes(tx, hashes)
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("identity: copy %s: write: %w", kind, err)
			}
			if progress != nil {
				progress(len(batch))
			}
			after = batch[len(batch)-1].key
			if len(batch) < store.CopyBatch {
				break
			}
		}
	}
	return nil
}

// SumStorage sums every kind of identity record (one store.TableSum each, in
// recordKinds order), the same way on either backend: records in ascending
// key order, each in a canonical encoding of its fields with times in
// microseconds (what PostgreSQL keeps of a time).
func SumStorage(ctx context.Context, db *store.DB) ([]store.TableSum, error) {
	st := newStorage(db)
	var sums []store.TableSum
	for _, kind := range recordKinds {
		sum := store.NewSummer(kind)
		var after []byte
		for {
			n := 0
			err := db.ViewContext(ctx, func(tx *store.Tx) error {
				n = 0
				return st.scan(tx, kind, after, scanBatch, func(k []byte, v any) error {
					n++
					after = k
					sum.Add(canonical(k, v))
					return nil
				})
			})
			if err != nil {
				return nil, fmt.Errorf("identity: sum %s: %w", kind, err)
			}
			if n < scanBatch {
				break
			}
		}
		sums = append(sums, sum.Sum())
	}
	return sums, nil
}

func micro(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

// canonical is the encoding SumStorage sums for the record v at key.
func canonical(key []byte, v any) []byte {
	var c any
	switch r := v.(type) {
	case *pepperInfo:
		c = []any{r.Value, micro(r.Created)}
	case Binding:
		c = []any{r.Medium, r.Address, r.MXID, micro(r.NotBefore), micro(r.NotAfter), micro(r.TS)}
	case Account:
		c = []any{key, r.UserID, micro(r.Created), micro(r.LastUsed), micro(r.Expired)}
	case map[string]bool:
		var accepted []string
		for k, ok := range r {
			if ok {
				accepted = append(accepted, k)
			}
		}
		slices.Sort(accepted)
		c = []any{string(key), accepted}
	case Session:
		hashes := r.TokenHashes
		if hashes == nil {
			hashes = [][]byte{}
		}
		c = []any{r.SID, r.SecretHash, r.Medium, r.Address, r.SendAttempt, hashes, r.NextLink,
			micro(r.Created), micro(r.Updated), micro(r.Validated), r.MailID}
	case string:
		c = []any{key, r}
	}
	raw, _ := json.Marshal(c)
	return raw
}
