package identity

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"net/mail"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"golang.org/x/crypto/argon2"

	"streamspace.dev/libs/apperr"
)

// Argon2id parameters for password hashes, OWASP's second recommended configuration
// (Password Storage Cheat Sheet): t=2 passes over m=19 MiB with p=1 lane, a 16-byte salt
// and a 32-byte key. Its cost is what keeps sign-in p99 within budget on a 2-core replica
// (see BenchmarkLogin): 19 MiB × a few concurrent sign-ins fits comfortably in memory,
// where the 64 MiB of RFC 9106's second recommendation would not under a burst. Hashes
// record their parameters (PHC string format), so raising them later only affects new
// hashes; verification reads the parameters from the stored string.
const (
	argonTime    = 2
	argonMemory  = 19 * 1024 // KiB
	argonThreads = 1
	argonKeyLen  = 32
	argonSaltLen = 16
)

// Password policy bounds, in bytes. The upper bound stops a megabyte "password" from
// costing a megabyte of hashing input per attempt.
const (
	MinPasswordLen = 12
	MaxPasswordLen = 256
)

// commonPasswords are refused outright: the top of every breached-password list, and
// variants long enough to pass the length rule.
var commonPasswords = map[string]bool{
	"123456789012": true, "1234567890123": true, "12345678901234": true, "qwertyuiopas": true,
	"password1234": true, "password12345": true, "passwordpassword": true, "qwerty123456": true,
	"iloveyou1234": true, "111111111111": true, "000000000000": true, "abcdefghijkl": true,
	"letmein12345": true, "welcome12345": true, "adminadmin12": true, "administrator": true,
	"changeme1234": true, "qwertyqwerty": true, "123123123123": true, "aaaaaaaaaaaa": true,
	"streamspace1": true, "streamspace123": true, "passw0rd1234": true, "football1234": true,
	"monkey123456": true, "dragon123456": true, "baseball1234": true, "superman1234": true,
	"1q2w3e4r5t6y": true, "zaq12wsxcde3": true, "qazwsxedcrfv": true, "trustno11234": true,
	"correcthorsebatterystaple": true, "password123!": true, "p@ssw0rd1234": true,
}

// CheckPassword enforces the password policy: 12 to 256 bytes, valid UTF-8 without
// control characters, not the email address, and not a well-known password.
func CheckPassword(password, email string) error {
	reason := ""
	lower := strings.ToLower(password)
	switch {
	case len(password) < MinPasswordLen:
		reason = fmt.Sprintf("must be at least %d characters long", MinPasswordLen)
	case len(password) > MaxPasswordLen:
		reason = fmt.Sprintf("must be at most %d bytes long", MaxPasswordLen)
	case !utf8.ValidString(password) || strings.ContainsFunc(password, unicode.IsControl):
		reason = "must be valid text without control characters"
	case email != "" && (lower == strings.ToLower(email) || lower == strings.ToLower(localPart(email))):
		reason = "must not be your email address"
	case commonPasswords[lower]:
		reason = "is too common; choose another"
	}
	if reason != "" {
		return apperr.Validation("password does not meet the policy", apperr.Field("password", reason))
	}
	return nil
}

func localPart(email string) string {
	local, _, _ := strings.Cut(email, "@")
	return local
}

// ParseEmail validates and normalises an email address: a bare address (no display
// name), at most 254 bytes, lowercased so that uniqueness and sign-in ignore case.
func ParseEmail(s string) (string, error) {
	bad := apperr.Validation("invalid email", apperr.Field("email", "must be an address such as ada@example.com"))
	if len(s) < 3 || len(s) > 254 || strings.ContainsFunc(s, unicode.IsControl) {
		return "", bad
	}
	a, err := mail.ParseAddress(s)
	if err != nil || a.Name != "" || a.Address != s || !strings.Contains(a.Address, "@") {
		return "", bad
	}
	return strings.ToLower(a.Address), nil
}

var b64 = base64.RawStdEncoding

// HashPassword returns the argon2id PHC string of password with a fresh salt.
func HashPassword(password string) (string, error) {
	salt := make([]byte, argonSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	key := argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime,
		argonThreads, b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

// VerifyPassword reports whether password matches the PHC string hash, comparing in
// constant time. A malformed hash never matches. Parameters are bounded, so a corrupted
// row cannot make one sign-in allocate gigabytes.
func VerifyPassword(hash, password string) bool {
	parts := strings.Split(hash, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false
	}
	var version int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return false
	}
	var m, t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil {
		return false
	}
	if m < 8 || m > 256*1024 || t < 1 || t > 10 || p < 1 || p > 16 {
		return false
	}
	salt, err := b64.DecodeString(parts[4])
	if err != nil || len(salt) < 8 {
		return false
	}
	want, err := b64.DecodeString(parts[5])
	if err != nil || len(want) < 16 || len(want) > 64 {
		return false
	}
	got := argon2.IDKey([]byte(password), salt, t, m, p, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1
}

var dummy = sync.OnceValue(func() string {
	h, err := HashPassword("streamspace-dummy-password-for-timing")
	if err != nil {
		panic(err) // crypto/rand failing is unrecoverable
	}
	return h
})

// burnPassword spends the time of one verification, so a sign-in for an unknown user
// takes as long as a wrong password for a known one.
func burnPassword(password string) { _ = VerifyPassword(dummy(), password) }
