// Package tenanttest places a tenant in a context for tests, standing in for the
// authentication middleware. Production code must not import it.
package tenanttest

import (
	"context"

	"streamspace.dev/libs/internal/principalctx"
	"streamspace.dev/libs/tenant"
)

// Context returns ctx authenticated as a test user of tenant id.
func Context(ctx context.Context, id tenant.ID) context.Context {
	return principalctx.With(ctx, principalctx.Principal{Kind: "test", Tenant: string(id), Subject: "test-user", Role: "owner"})
}
