package tenant_test

import (
	"context"
	"testing"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/tenant"
	"streamspace.dev/libs/tenant/tenanttest"
)

func TestParseSlug(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in string
		ok bool
	}{
		{"acme", true}, {"acme-corp-2", true}, {"a1b", true},
		{"ab", false}, {"Acme", false}, {"acme_corp", false}, {"-acme", false}, {"acme-", false},
		{"ac--me", false}, {"1acme", false}, {"platform", false}, {"public", false},
		{`x"; drop schema public; --`, false}, {"acme\x00", false}, {"ácme", false},
		{"abcdefghijabcdefghijabcdefghijabcdefghijk", false},
	}
	for _, tc := range cases {
		_, err := tenant.ParseSlug(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("ParseSlug(%q) error = %v, want ok=%v", tc.in, err, tc.ok)
		}
		if err != nil && apperr.CodeOf(err) != apperr.Invalid {
			t.Errorf("ParseSlug(%q) code = %s", tc.in, apperr.CodeOf(err))
		}
	}
}

func TestIDs(t *testing.T) {
	t.Parallel()
	seen := map[tenant.ID]bool{}
	for range 1000 {
		id := tenant.NewID()
		if _, err := tenant.ParseID(string(id)); err != nil {
			t.Fatalf("NewID produced unparsable %q: %v", id, err)
		}
		if seen[id] {
			t.Fatalf("duplicate id %q", id)
		}
		seen[id] = true
	}
	for _, bad := range []string{"", "t_abc", "ABCDEFGHIJKL", "abcdefghijk1", `abc"defghijk`, "abcdefghijklm"} {
		if _, err := tenant.ParseID(bad); err == nil {
			t.Errorf("ParseID(%q) accepted", bad)
		}
	}
	if got := tenant.ID("abcdefghijkl").Schema(); got != "t_abcdefghijkl" {
		t.Fatalf("schema %q", got)
	}
}

func TestContext(t *testing.T) {
	t.Parallel()
	if _, ok := tenant.FromContext(context.Background()); ok {
		t.Fatal("empty context has a tenant")
	}
	id := tenant.NewID()
	got, ok := tenant.FromContext(tenanttest.Context(context.Background(), id))
	if !ok || got != id {
		t.Fatalf("got %q %v", got, ok)
	}
}
