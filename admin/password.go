package admin

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"

	"golang.org/x/crypto/argon2"
)

// Argon2Params are the cost parameters of an argon2id hash.
type Argon2Params struct {
	Memory  uint32 // KiB
	Time    uint32
	Threads uint8
}

// DefaultArgon2 follows OWASP's argon2id recommendation (19 MiB, 2 passes, 1 lane).
var DefaultArgon2 = Argon2Params{Memory: 19 * 1024, Time: 2, Threads: 1}

// MinPasswordLength is the shortest password accepted for a new account.
const MinPasswordLength = 10

// ErrBadHash means a stored password hash is not a PHC argon2id string.
var ErrBadHash = errors.New("admin: password hash is not an argon2id PHC string ($argon2id$v=19$m=...,t=...,p=...$salt$hash)")

// HashPassword returns password's argon2id hash in PHC string form, the form
// admin.users[].password_hash takes.
func HashPassword(password string) (string, error) {
	return hashPassword(password, DefaultArgon2)
}

func hashPassword(password string, p Argon2Params) (string, error) {
	if len(password) < MinPasswordLength {
		return "", fmt.Errorf("admin: the password must be at least %d characters long", MinPasswordLength)
	}
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	sum := argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, 32)
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, p.Memory, p.Time, p.Threads,
		b64.EncodeToString(salt), b64.EncodeToString(sum)), nil
}

// CheckHash reports whether hash is a well-formed argon2id PHC string.
func CheckHash(hash string) error {
	_, _, _, err := parseHash(hash)
	return err
}

func parseHash(hash string) (p Argon2Params, salt, sum []byte, err error) {
	parts := strings.Split(hash, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" {
		return p, nil, nil, ErrBadHash
	}
	var v int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &v); err != nil || v != argon2.Version {
		return p, nil, nil, ErrBadHash
	}
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &p.Memory, &p.Time, &p.Threads); err != nil {
		return p, nil, nil, ErrBadHash
	}
	// Refuse absurd costs so a bad config cannot stall every login.
	if p.Memory < 8 || p.Memory > 1<<21 || p.Time < 1 || p.Time > 64 || p.Threads < 1 {
		return p, nil, nil, ErrBadHash
	}
	b64 := base64.RawStdEncoding
	if salt, err = b64.DecodeString(parts[4]); err != nil || len(salt) < 8 {
		return p, nil, nil, ErrBadHash
	}
	if sum, err = b64.DecodeString(parts[5]); err != nil || len(sum) < 16 {
		return p, nil, nil, ErrBadHash
	}
	return p, salt, sum, nil
}

// VerifyPassword reports whether password matches hash, in constant time.
func VerifyPassword(hash, password string) bool {
	p, salt, sum, err := parseHash(hash)
	if err != nil {
		return false
	}
	got := argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, uint32(len(sum)))
	return subtle.ConstantTimeCompare(got, sum) == 1
}

// dummyHash is verified against when the user does not exist, so a login for
// an unknown name costs as much as one for a known name.
var dummyHash = sync.OnceValue(func() string {
	h, _ := hashPassword("not-a-real-password", DefaultArgon2)
	return h
})
