package wire

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"slices"
)

// checksumDomain starts every checksum input, so a desired-set digest can never equal a
// digest of anything else, and a future canonical form can change the prefix.
const checksumDomain = "streamspace desired-set v1\x00"

// ChecksumPrefix starts every checksum string, naming the hash so it can change later
// without ambiguity.
const ChecksumPrefix = "sha256:"

// Checksum returns the canonical digest of a desired set, so that the gateway and the
// agent can tell after a reconnect whether their sets agree without sending them.
//
// It covers, per assignment, the session id, tenant id, generation and desired state, in
// order of session id (then generation), each string prefixed by its length. The spec is
// left out on purpose: a spec change always bumps the generation, and JSON specs are not
// byte-stable across encoders (PostgreSQL jsonb reorders keys), so hashing them would
// report false differences. The order of set does not matter; set is not modified.
// PROTOCOL.md gives the exact byte layout for implementations in other languages.
func Checksum(set []Assignment) string {
	idx := make([]int, len(set))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int {
		return cmp.Or(cmp.Compare(set[a].SessionID, set[b].SessionID), cmp.Compare(set[a].Generation, set[b].Generation))
	})
	h := sha256.New()
	// One reusable buffer per call: hash.Hash takes bytes, and converting each string
	// separately would allocate per field.
	b := append(make([]byte, 0, 256), checksumDomain...)
	b = binary.AppendUvarint(b, uint64(len(set)))
	for _, i := range idx {
		a := &set[i]
		b = appendString(b, string(a.SessionID))
		b = appendString(b, string(a.TenantID))
		b = binary.BigEndian.AppendUint64(b, uint64(a.Generation))
		b = appendString(b, string(a.Desired))
		h.Write(b)
		b = b[:0]
	}
	h.Write(b)
	return ChecksumPrefix + hex.EncodeToString(h.Sum(nil))
}

// appendString appends s with its uvarint length, so adjacent fields cannot run together.
func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}
