// Package seal encrypts secrets at rest — signing keys, the agents' CA key — under a
// key-encryption key (KEK) from configuration, so a copy of the database alone reveals
// nothing.
//
// The format is AES-256-GCM with a random 96-bit nonce prepended to the ciphertext. The
// caller passes associated data that names the row (a key id), so a sealed value moved to
// another row fails to open instead of decrypting under the wrong name.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
)

// KeySize is the length of a key-encryption key: AES-256.
const KeySize = 32

// ParseKey decodes a base64 key-encryption key (standard or URL alphabet, padded or not).
func ParseKey(s string) ([]byte, error) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			if len(b) != KeySize {
				return nil, fmt.Errorf("the key-encryption key must be %d bytes, got %d", KeySize, len(b))
			}
			return b, nil
		}
	}
	return nil, errors.New("the key-encryption key must be base64")
}

// NewKey returns a fresh random key-encryption key, base64-encoded.
func NewKey() (string, error) {
	b := make([]byte, KeySize)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// ErrOpen means a sealed value could not be opened: the wrong key, the wrong associated
// data, or tampering. The three are deliberately indistinguishable.
var ErrOpen = errors.New("seal: cannot open sealed value (wrong key-encryption key, or tampered)")

// Sealer seals and opens values under one key-encryption key. It is safe for concurrent use.
type Sealer struct{ aead cipher.AEAD }

// New returns a Sealer for the raw key kek.
func New(kek []byte) (*Sealer, error) {
	if len(kek) != KeySize {
		return nil, fmt.Errorf("the key-encryption key must be %d bytes", KeySize)
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Sealer{aead: aead}, nil
}

// Seal encrypts plaintext bound to aad.
func (s *Sealer) Seal(plaintext, aad []byte) ([]byte, error) {
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plaintext)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return s.aead.Seal(nonce, nonce, plaintext, aad), nil
}

// Open decrypts a value made by Seal with the same aad.
func (s *Sealer) Open(sealed, aad []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n+s.aead.Overhead() {
		return nil, ErrOpen
	}
	pt, err := s.aead.Open(nil, sealed[:n], sealed[n:], aad)
	if err != nil {
		return nil, ErrOpen
	}
	return pt, nil
}
