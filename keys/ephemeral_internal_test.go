package keys

import (
	"encoding/json"
	"testing"
	"time"
)

// TestDecodeEphemeralFastAgrees: the reflection-free decoder of ephemeral
// records gives what encoding/json gives for every record Put and
// Invalidate write, and declines (ok false) anything of another shape.
func TestDecodeEphemeralFastAgrees(t *testing.T) {
	exp := time.Date(2026, 11, 29, 21, 0, 0, 123456789, time.UTC)
	for _, r := range []ephemeralRecord{
		{Valid: true},
		{Valid: false},
		{Valid: true, Ref: "inv_01JD"},
		{Valid: true, Ref: "inv_01JD", Expires: exp},
		{Valid: false, Ref: "inv_01JD", Expires: exp},
		{Valid: true, Expires: exp.In(time.FixedZone("x", 3600))},
		{Valid: true, Ref: `a"b<c>`, Expires: exp},
	} {
		raw, _ := json.Marshal(r)
		var want ephemeralRecord
		if err := json.Unmarshal(raw, &want); err != nil {
			t.Fatal(err)
		}
		got, ok := decodeEphemeralFast(raw)
		if !ok {
			if r.Ref == `a"b<c>` {
				continue // escaped: declined, encoding/json decodes it
			}
			t.Fatalf("%s: declined", raw)
		}
		if got.Valid != want.Valid || got.Ref != want.Ref || !got.Expires.Equal(want.Expires) {
			t.Errorf("%s: fast %+v, encoding/json %+v", raw, got, want)
		}
		// The validity check's decoding, which leaves the ref out.
		if v, ok := decodeEphemeralBytes(raw, false); !ok || v.Valid != want.Valid || v.Ref != "" || !v.Expires.Equal(want.Expires) {
			t.Errorf("%s: without the ref %+v, %v; encoding/json %+v", raw, v, ok, want)
		}
	}
	for _, raw := range []string{
		``, `{}`, `{"valid":true,"expires":"x"}`, `{"valid":true} `, `{"valid":true,"other":1}`,
		`{"ref":"a","valid":true}`, `{"valid":true,"ref":"a\"b"}`, `{"valid":truex}`,
	} {
		if r, ok := decodeEphemeralFast([]byte(raw)); ok {
			t.Errorf("%s: accepted as %+v", raw, r)
		}
	}
}
