// Package tenantdb is the only door to tenant data.
//
// Every tenant's rows live in its own schema, t_<id>, with the same tables as every other
// tenant's. InTenant takes the tenant from the verified request context (package tenant),
// never from an argument, opens a transaction, and scopes it to that schema with
// SET LOCAL search_path. The setting ends with the transaction, so a pooled connection —
// or one shared through PgBouncer in transaction mode — never carries one tenant's scope
// into another's work. A context without a tenant, an unknown tenant and a suspended
// tenant all fail closed with typed errors before any SQL of the caller runs.
//
// # The statement-cache decision
//
// pgx caches prepared statements, and their result descriptions, by SQL text per
// connection. In a schema-per-tenant database the same text means different tables for
// different tenants, and during a rolling migration those tables differ in shape: a
// statement prepared while tenant A (version 1) was in scope and reused for tenant B
// (version 2) fails with "cached plan must not change result type", or worse, decodes B's
// columns with A's types.
//
// tenantdb therefore runs every query in pgx's QueryExecModeExec: the unnamed statement,
// described and executed in the same single round trip, with nothing cached by SQL text.
// The server plans each statement afresh; for the short OLTP statements of a control plane
// that costs microseconds, far less than the round trip that CacheStatement would save, and
// it keeps working through PgBouncer. Open sets the mode; New refuses a pool with another.
// The tenants module's TestStatementCacheHazard proves both halves: pgx's default mode
// fails on alternating schema versions, and tenantdb's does not.
//
// # The tenant check
//
// Before scoping a transaction InTenant checks platform.tenants for the tenant's status,
// through a small cache (TTL a few seconds) so the check costs nothing on the hot path. A
// suspended or deleted tenant is therefore refused within one TTL on every replica.
//
// # Round trips
//
// BEGIN and the SET LOCAL travel together in one simple-protocol message, so a tenant
// transaction costs the same round trips as a plain one: one for BEGIN, one per
// statement (or pipelined batch), one for COMMIT. A read whose statements need no answer
// before the next one goes through InTenantRead instead, which pipelines BEGIN READ ONLY,
// the SET LOCAL, the statements and COMMIT in one round trip: the API's list, the
// template and settings reads of every create, and the gateway's reads on the way from a
// create to its agent use it.
package tenantdb
