package gateway

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
)

// KEKSize is the length of the key-encryption key: AES-256, the same key identity uses.
//
// The sealing below mirrors identity's (AES-256-GCM, random nonce prepended, the row id as
// associated data). identity does not export it, so it is repeated here; it belongs in a
// small libs package (e.g. libs/seal) that both would use.
const KEKSize = 32

// ParseKEK decodes a base64 key-encryption key (standard or URL alphabet, padded or not).
func ParseKEK(s string) ([]byte, error) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			if len(b) != KEKSize {
				return nil, fmt.Errorf("the key-encryption key must be %d bytes, got %d", KEKSize, len(b))
			}
			return b, nil
		}
	}
	return nil, errors.New("the key-encryption key must be base64")
}

// sealer seals private keys at rest.
type sealer struct{ aead cipher.AEAD }

func newSealer(kek []byte) (*sealer, error) {
	if len(kek) != KEKSize {
		return nil, fmt.Errorf("the key-encryption key must be %d bytes", KEKSize)
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: aead}, nil
}

// seal encrypts plain, binding it to id so a sealed key cannot be moved to another row.
func (s *sealer) seal(plain []byte, id string) []byte {
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	_, _ = rand.Read(nonce)
	return s.aead.Seal(nonce, nonce, plain, []byte(id))
}

func (s *sealer) open(sealed []byte, id string) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n {
		return nil, errors.New("sealed key is too short")
	}
	plain, err := s.aead.Open(nil, sealed[:n], sealed[n:], []byte(id))
	if err != nil {
		return nil, errors.New("cannot unseal the CA key: wrong key-encryption key?")
	}
	return plain, nil
}
