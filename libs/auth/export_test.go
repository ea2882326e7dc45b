package auth

// Settle waits for the fetch running now, if any, so tests can look at its outcome
// without sleeping.
func (s *JWKSSource) Settle() {
	s.mu.Lock()
	call := s.inflight
	s.mu.Unlock()
	if call != nil {
		<-call.done
	}
}

// Remembered returns how many accepted tokens v remembers.
func Remembered(v *Verifier) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.verified)
}
