package catalog

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/auth"
)

// service implements Service. Authorisation is here, at the top of every method, and
// fails closed: a context without a principal is unauthenticated before the store runs.
type service struct {
	store  Store
	parse  ParseFunc
	logger *slog.Logger
}

// NewService returns the catalog's business logic over store, parsing imports with parse
// (manifest.Parse).
func NewService(store Store, parse ParseFunc, logger *slog.Logger) Service {
	return &service{store: store, parse: parse, logger: logger}
}

// caller checks that the context may act on scope, writing or only reading, and reports
// whether it may see disabled templates.
func caller(ctx context.Context, scope Scope, write bool) (admin bool, err error) {
	switch scope {
	case ScopePlatform:
		if _, err := auth.RequireOperator(ctx); err != nil {
			return false, err
		}
		return true, nil
	case ScopeTenant:
		min := auth.RoleMember
		if write {
			min = auth.RoleAdmin
		}
		p, err := auth.RequireRole(ctx, min)
		if err != nil {
			return false, err
		}
		// A personal API token acts only within its scopes, whatever its owner's role.
		need := auth.ScopeCatalogRead
		if write {
			need = auth.ScopeCatalogWrite
		}
		if _, err := auth.RequireScope(ctx, need); err != nil {
			return false, err
		}
		return p.Kind == auth.KindSystem || p.Role.AtLeast(auth.RoleAdmin), nil
	default:
		return false, apperr.New(apperr.NotFound, "not found")
	}
}

// cursorPrefix versions the cursor format, so it can change without misreading old ones.
const cursorPrefix = "n1:"

func encodeCursor(name TemplateName) string {
	return base64.RawURLEncoding.EncodeToString([]byte(cursorPrefix + string(name)))
}

func decodeCursor(c string) (TemplateName, error) {
	if c == "" {
		return "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err == nil && bytes.HasPrefix(b, []byte(cursorPrefix)) {
		if name, err := ParseName(string(b[len(cursorPrefix):])); err == nil {
			return name, nil
		}
	}
	return "", apperr.Validation("invalid cursor", apperr.Field("cursor", "is not a cursor this API returned"))
}

func (s *service) List(ctx context.Context, scope Scope, q Query) (Page, error) {
	admin, err := caller(ctx, scope, false)
	if err != nil {
		return Page{}, err
	}
	after, err := decodeCursor(q.Cursor)
	if err != nil {
		return Page{}, err
	}
	limit := q.Limit
	switch {
	case limit == 0:
		limit = DefaultLimit
	case limit < 0 || limit > MaxLimit:
		return Page{}, apperr.Validation("invalid page size", apperr.Field("limit", fmt.Sprintf("must be between 1 and %d", MaxLimit)))
	}
	if len(q.Text) > 200 || len(q.Category) > MaxCategory || len(q.Tag) > 40 {
		return Page{}, apperr.Validation("invalid filter", apperr.Field("q", "filters must be short (text 200, category 60, tag 40 characters)"))
	}
	items, err := s.store.List(ctx, scope, StoreQuery{Category: q.Category, Tag: q.Tag, Text: q.Text, After: after,
		Limit: limit, IncludeDisabled: q.IncludeDisabled && admin})
	if err != nil {
		return Page{}, err
	}
	page := Page{Items: items}
	if len(items) > limit {
		page.Items = items[:limit]
		page.NextCursor = encodeCursor(items[limit-1].Name)
	}
	if page.Items == nil {
		page.Items = []Template{}
	}
	return page, nil
}

func (s *service) Get(ctx context.Context, scope Scope, name TemplateName) (Template, error) {
	admin, err := caller(ctx, scope, false)
	if err != nil {
		return Template{}, err
	}
	if _, err := ParseName(string(name)); err != nil {
		return Template{}, notFound(name)
	}
	t, err := s.store.Get(ctx, scope, name, true)
	if err != nil {
		return Template{}, err
	}
	if !t.Enabled && !admin {
		// Members cannot launch a disabled template, so to them it does not exist.
		return Template{}, notFound(name)
	}
	return t, nil
}

func notFound(name TemplateName) error {
	return apperr.New(apperr.NotFound, "template %q not found", name)
}

func (s *service) Create(ctx context.Context, scope Scope, nt NewTemplate) (Template, error) {
	if _, err := caller(ctx, scope, true); err != nil {
		return Template{}, err
	}
	nt.Spec.Normalize()
	if err := Validate(nt.Name, nt.Spec); err != nil {
		return Template{}, err
	}
	return s.store.Create(ctx, scope, nt.Name, nt.Spec, nt.Enabled == nil || *nt.Enabled)
}

// checkPrecondition maps a store's stale-version conflict to precondition_failed when the
// version came from If-Match, as RFC 9110 asks.
func checkPrecondition(err error, pre Precondition) error {
	if pre.FromIfMatch && apperr.IsCode(err, apperr.Conflict) {
		e, _ := apperr.As(err)
		return apperr.Wrap(err, apperr.PreconditionFailed, "If-Match does not match: %s", e.Message)
	}
	return err
}

func (s *service) Update(ctx context.Context, scope Scope, name TemplateName, u Update) (Template, error) {
	if _, err := caller(ctx, scope, true); err != nil {
		return Template{}, err
	}
	if _, err := ParseName(string(name)); err != nil {
		return Template{}, notFound(name)
	}
	if u.If.Version <= 0 {
		// Without a version an update could silently undo someone else's.
		return Template{}, apperr.Validation("an update needs the version it replaces",
			apperr.Field("version", "send an If-Match header with the ETag, or the version field"))
	}
	u.Spec.Normalize()
	if err := ValidateSpec(u.Spec); err != nil {
		return Template{}, err
	}
	t, err := s.store.Update(ctx, scope, name, u.Spec, u.Enabled, u.If.Version)
	return t, checkPrecondition(err, u.If)
}

func (s *service) SetEnabled(ctx context.Context, scope Scope, name TemplateName, enabled bool, pre Precondition) (Template, error) {
	if _, err := caller(ctx, scope, true); err != nil {
		return Template{}, err
	}
	if _, err := ParseName(string(name)); err != nil {
		return Template{}, notFound(name)
	}
	t, err := s.store.SetEnabled(ctx, scope, name, enabled, pre.Version)
	return t, checkPrecondition(err, pre)
}

func (s *service) Delete(ctx context.Context, scope Scope, name TemplateName, pre Precondition) error {
	if _, err := caller(ctx, scope, true); err != nil {
		return err
	}
	if _, err := ParseName(string(name)); err != nil {
		return notFound(name)
	}
	return checkPrecondition(s.store.Delete(ctx, scope, name, pre.Version), pre)
}

func (s *service) Import(ctx context.Context, scope Scope, data []byte) (ImportReport, error) {
	if _, err := caller(ctx, scope, true); err != nil {
		return ImportReport{}, err
	}
	docs, err := s.parse(data)
	if err != nil {
		return ImportReport{}, err
	}
	return ImportDocuments(ctx, s.store, scope, "", docs, s.logger), nil
}

// ImportDocuments stores parsed documents one by one, each in its own transaction, and
// reports each. It does no authorisation: Service.Import checks the caller, and the
// `catalog import` command holds the database itself. A store fault rejects only its
// document; it is logged, and the report says no more than "internal error".
func ImportDocuments(ctx context.Context, store Store, scope Scope, source string, docs []ManifestDocument, logger *slog.Logger) ImportReport {
	report := ImportReport{Results: []ImportResult{}}
	for _, d := range docs {
		res := ImportResult{Source: source, Document: d.Index, Line: d.Line, Name: d.Name}
		if d.Err != nil {
			res.Outcome = OutcomeRejected
			res.Reason, res.Errors = describe(d.Err)
			report.Add(res)
			continue
		}
		t, outcome, err := store.Upsert(ctx, scope, d.Name, d.Spec)
		if err != nil {
			if apperr.CodeOf(err) == apperr.Internal && logger != nil {
				logger.ErrorContext(ctx, "importing a template failed", "template", d.Name, "err", err)
			}
			res.Outcome = OutcomeRejected
			res.Reason, res.Errors = describe(err)
			report.Add(res)
			continue
		}
		res.Outcome, res.Version = outcome, t.Version
		report.Add(res)
	}
	return report
}

func describe(err error) (string, []FieldError) {
	p := apperr.ProblemOf(err)
	var fields []FieldError
	for _, f := range p.Errors {
		fields = append(fields, FieldError{Field: f.Field, Reason: f.Reason})
	}
	if p.Code == apperr.Internal {
		return "internal error", nil
	}
	return p.Detail, fields
}

// SeedID names the built-in catalog's version. Bump it when seed.json gains templates
// that existing installs should receive.
const SeedID = "builtin-v1"

//go:embed seed.json
var seedJSON []byte

// SeedTemplates returns the built-in platform catalog, validated.
func SeedTemplates() ([]NewTemplate, error) {
	var ts []NewTemplate
	dec := json.NewDecoder(bytes.NewReader(seedJSON))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ts); err != nil {
		return nil, fmt.Errorf("reading the built-in catalog: %w", err)
	}
	for i := range ts {
		ts[i].Spec.Normalize()
		if err := Validate(ts[i].Name, ts[i].Spec); err != nil {
			return nil, fmt.Errorf("built-in template %s: %w", ts[i].Name, err)
		}
	}
	return ts, nil
}

// Seed applies the built-in platform catalog once per SeedID: a fresh install gets it, and
// a template an operator later deletes stays deleted. It reports whether it applied.
func Seed(ctx context.Context, store Store) (bool, error) {
	ts, err := SeedTemplates()
	if err != nil {
		return false, err
	}
	return store.Seed(ctx, SeedID, ts)
}

// ETag returns a template's entity tag: its scope and version, so a tag read from the
// merged view never matches the tenant's own template of the same name by accident.
func ETag(t Template) string {
	return fmt.Sprintf(`"%s-%d"`, t.Scope, t.Version)
}

// ParseIfMatch reads an If-Match header for a write to scope. It returns the version the
// caller expects (0 for "*", which asks only that the template exist) and whether the
// header was present. A tag of another scope, a weak tag or garbage cannot match anything
// stored, and is reported as precondition_failed at once.
func ParseIfMatch(header string, scope Scope) (Precondition, bool, error) {
	header = strings.TrimSpace(header)
	if header == "" {
		return Precondition{}, false, nil
	}
	if header == "*" {
		return Precondition{FromIfMatch: true}, true, nil
	}
	var version int64
	if _, err := fmt.Sscanf(header, `"`+string(scope)+`-%d"`, &version); err != nil || version <= 0 ||
		header != fmt.Sprintf(`"%s-%d"`, scope, version) {
		return Precondition{}, true, apperr.New(apperr.PreconditionFailed, "If-Match %s does not match the current %s template", header, scope)
	}
	return Precondition{Version: version, FromIfMatch: true}, true, nil
}
