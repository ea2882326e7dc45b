package postgres_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"testing"
	"time"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/auth"
	"streamspace.dev/services/identity"
	"streamspace.dev/services/identity/postgres"
	"streamspace.dev/tenants/tenantstest"
)

func digest(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }

// TestAnotherTenantSeesNothing: every tenant-scoped read and write from tenant B misses
// tenant A's rows, and nothing runs without a tenant at all.
func TestAnotherTenantSeesNothing(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	s := postgres.New(env.DB)
	_, ctxA := env.Tenant(t, "store-a")
	_, ctxB := env.Tenant(t, "store-b")
	u, err := s.CreateUser(ctxA, "ada@a.test", "hash", auth.RoleOwner)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CreateRefreshToken(ctxA, u.ID, digest("r1"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	tok, err := s.CreateAPIToken(ctxA, identity.APIToken{UserID: u.ID, Name: "t", Scopes: []string{"identity:read"}}, digest("p1"))
	if err != nil {
		t.Fatal(err)
	}
	enr, err := s.CreateEnrollmentToken(ctxA, identity.EnrollmentToken{Name: "e", Tags: []string{}, ExpiresAt: time.Now().Add(time.Hour)}, digest("e1"))
	if err != nil {
		t.Fatal(err)
	}
	notFound := func(name string, err error) {
		t.Helper()
		if !apperr.IsCode(err, apperr.NotFound) && !apperr.IsCode(err, apperr.Unauthenticated) {
			t.Errorf("%s from tenant B: %v", name, err)
		}
	}
	_, err = s.User(ctxB, u.ID)
	notFound("User", err)
	_, _, err = s.UserByEmail(ctxB, "ada@a.test")
	notFound("UserByEmail", err)
	_, err = s.UpdateUser(ctxB, u.ID, identity.UserPatch{}, func(identity.User) error { return nil })
	notFound("UpdateUser", err)
	notFound("DeleteUser", s.DeleteUser(ctxB, u.ID, func(identity.User) error { return nil }))
	_, err = s.RotateRefreshToken(ctxB, digest("r1"), digest("r2"), time.Now().Add(time.Hour))
	notFound("RotateRefreshToken", err)
	notFound("RevokeAPIToken", s.RevokeAPIToken(ctxB, u.ID, tok.ID))
	_, _, err = s.UseAPIToken(ctxB, digest("p1"))
	notFound("UseAPIToken", err)
	notFound("RevokeEnrollmentToken", s.RevokeEnrollmentToken(ctxB, enr.ID))
	_, err = s.ConsumeEnrollmentToken(ctxB, digest("e1"))
	notFound("ConsumeEnrollmentToken", err)
	if users, err := s.Users(ctxB); err != nil || len(users) != 0 {
		t.Errorf("Users from B: %v %v", users, err)
	}
	if toks, err := s.EnrollmentTokens(ctxB); err != nil || len(toks) != 0 {
		t.Errorf("EnrollmentTokens from B: %v %v", toks, err)
	}
	// No tenant at all: refused before any SQL.
	if _, err := s.Users(context.Background()); !apperr.IsCode(err, apperr.Unauthenticated) {
		t.Errorf("Users without a tenant: %v", err)
	}
	// A's data is intact.
	if _, err := s.RotateRefreshToken(ctxA, digest("r1"), digest("r2"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ConsumeEnrollmentToken(ctxA, digest("e1")); err != nil {
		t.Fatal(err)
	}
}

// TestRefreshRotationAndReuse at the store: rotation, reuse detection committing the
// family's revocation, and concurrent use of one token yielding one winner.
func TestRefreshRotationAndReuse(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	s := postgres.New(env.DB)
	_, ctx := env.Tenant(t, "rotation")
	u, err := s.CreateUser(ctx, "ada@r.test", "hash", auth.RoleOwner)
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour)
	if err := s.CreateRefreshToken(ctx, u.ID, digest("1"), exp); err != nil {
		t.Fatal(err)
	}
	// Ten concurrent presentations of one token: exactly one rotates it.
	results := make(chan error, 10)
	for i := range 10 {
		go func() {
			_, err := s.RotateRefreshToken(ctx, digest("1"), digest("2-"+string(rune('a'+i))), exp)
			results <- err
		}()
	}
	wins, reuses := 0, 0
	for range 10 {
		switch err := <-results; {
		case err == nil:
			wins++
		case errors.Is(err, identity.ErrTokenReused):
			reuses++
		default:
			// After the family is revoked, later presentations see a revoked token.
			if !apperr.IsCode(err, apperr.Unauthenticated) {
				t.Fatalf("unexpected %v", err)
			}
		}
	}
	if wins != 1 || reuses < 1 {
		t.Fatalf("wins %d reuses %d", wins, reuses)
	}
}

// TestThrottleGrows: the lock starts at the threshold and doubles per further failure.
func TestThrottleGrows(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	s := postgres.New(env.DB)
	ctx := context.Background()
	var locks []time.Duration
	for range 4 {
		if err := s.RecordFailure(ctx, "k", 2, time.Minute, time.Hour, 15*time.Minute); err != nil {
			t.Fatal(err)
		}
		until, err := s.Throttled(ctx, "k", "other")
		if err != nil {
			t.Fatal(err)
		}
		locks = append(locks, time.Until(until).Round(10*time.Second))
	}
	if locks[0] > 0 || locks[1] != time.Minute || locks[2] != 2*time.Minute || locks[3] != 4*time.Minute {
		t.Fatalf("locks %v", locks)
	}
	if err := s.ResetFailures(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if until, _ := s.Throttled(ctx, "k"); !until.IsZero() {
		t.Fatalf("still locked until %v", until)
	}
}
