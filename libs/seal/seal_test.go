package seal

import (
	"bytes"
	"errors"
	"testing"
)

func TestSealOpen(t *testing.T) {
	t.Parallel()
	k1, _ := NewKey()
	k2, _ := NewKey()
	raw1, err := ParseKey(k1)
	if err != nil {
		t.Fatal(err)
	}
	raw2, _ := ParseKey(k2)
	s1, _ := New(raw1)
	s2, _ := New(raw2)
	secret := []byte("ed25519 seed, 32 bytes long ....")
	sealed, err := s1.Seal(secret, []byte("kid-1"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, secret) {
		t.Fatal("plaintext visible in sealed value")
	}
	if got, err := s1.Open(sealed, []byte("kid-1")); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("open: %q %v", got, err)
	}
	tampered := append([]byte(nil), sealed...)
	tampered[len(tampered)-1] ^= 1
	for name, try := range map[string]func() ([]byte, error){
		"other key": func() ([]byte, error) { return s2.Open(sealed, []byte("kid-1")) },
		"other row": func() ([]byte, error) { return s1.Open(sealed, []byte("kid-2")) },
		"tampered":  func() ([]byte, error) { return s1.Open(tampered, []byte("kid-1")) },
		"truncated": func() ([]byte, error) { return s1.Open(sealed[:5], []byte("kid-1")) },
		"empty":     func() ([]byte, error) { return s1.Open(nil, []byte("kid-1")) },
	} {
		if _, err := try(); !errors.Is(err, ErrOpen) {
			t.Errorf("%s: err = %v, want ErrOpen", name, err)
		}
	}
	again, _ := s1.Seal(secret, []byte("kid-1"))
	if bytes.Equal(again, sealed) {
		t.Fatal("two seals of one value are identical: nonce reuse")
	}
}

func TestParseKey(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"", "not base64!!", "c2hvcnQ=", "AAAA"} {
		if _, err := ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) accepted", bad)
		}
	}
	if _, err := New(make([]byte, 16)); err == nil {
		t.Fatal("New accepted a 16-byte key")
	}
}
