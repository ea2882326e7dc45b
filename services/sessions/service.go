package sessions

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/spec"
	"streamspace.dev/services/catalog"
)

// Limits of the API's input.
const (
	MaxName           = 100
	MaxTags           = 20
	MaxIdempotencyKey = 255
)

var (
	tagPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._:=-]{0,62}$`)
	keyPattern = regexp.MustCompile(`^[\x21-\x7e]{1,255}$`)
)

// service implements Service. Authorisation is at the top of every method and fails
// closed: without a principal nothing reaches the store.
type service struct {
	store     Store
	templates Templates
	now       func() time.Time
}

// NewService returns the sessions logic over store, resolving templates with templates
// (catalog's Service, which applies the caller's view and shadowing).
func NewService(store Store, templates Templates) Service {
	return &service{store: store, templates: templates, now: time.Now}
}

// caller returns who is calling and the owner scope their reads and writes are limited
// to. A personal API token must also carry sessions:read, or sessions:write to change
// anything.
func caller(ctx context.Context, write bool) (auth.Principal, Scope, error) {
	p, err := auth.RequireRole(ctx, auth.RoleMember)
	if err != nil {
		return p, Scope{}, err
	}
	need := auth.ScopeSessionsRead
	if write {
		need = auth.ScopeSessionsWrite
	}
	if _, err := auth.RequireScope(ctx, need); err != nil {
		return p, Scope{}, err
	}
	if isAdmin(p) {
		return p, Scope{}, nil
	}
	return p, Scope{Owner: p.Subject}, nil
}

func isAdmin(p auth.Principal) bool {
	return p.Kind == auth.KindSystem || p.Role.AtLeast(auth.RoleAdmin)
}

// Actor names a principal in events and the audit log: the user id, or "system:<name>".
func Actor(p auth.Principal) string {
	if p.Kind == auth.KindSystem {
		return "system:" + p.Subject
	}
	return p.Subject
}

func normalizeTags(tags []string) ([]string, error) {
	if len(tags) > MaxTags {
		return nil, apperr.Validation("too many tags", apperr.Field("tags", fmt.Sprintf("at most %d", MaxTags)))
	}
	out := make([]string, 0, len(tags))
	seen := map[string]bool{}
	for i, t := range tags {
		t = strings.ToLower(strings.TrimSpace(t))
		if !tagPattern.MatchString(t) {
			return nil, apperr.Validation("invalid tag", apperr.Field("tags/"+strconv.Itoa(i),
				"1 to 63 characters of lowercase letters, digits and . _ : = -, starting with a letter or digit"))
		}
		if !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	return out, nil
}

// requestHash identifies a create request for its Idempotency-Key: the same key with a
// different body must not silently return the first body's session.
func requestHash(in NewSession) string {
	b, _ := json.Marshal(in) // a struct of strings, ints and slices always marshals
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func (s *service) Create(ctx context.Context, in NewSession, key string) (Session, bool, error) {
	p, _, err := caller(ctx, true)
	if err != nil {
		return Session{}, false, err
	}
	var idem *Idempotency
	if key != "" {
		if !keyPattern.MatchString(key) {
			return Session{}, false, apperr.Validation("invalid Idempotency-Key",
				apperr.Field("Idempotency-Key", "1 to 255 printable ASCII characters"))
		}
		idem = &Idempotency{Key: key, RequestHash: requestHash(in)}
	}
	rec, err := s.resolve(ctx, p, in)
	if err != nil {
		return Session{}, false, err
	}
	return s.store.Create(ctx, rec, idem, Actor(p))
}

// resolve turns a create request into the session to store: the template resolved in the
// caller's view, the overrides checked against its limits, the timers from the template
// or the tenant's defaults.
func (s *service) resolve(ctx context.Context, p auth.Principal, in NewSession) (Record, error) {
	var fields []apperr.FieldError
	name, err := catalog.ParseName(in.Template)
	if err != nil {
		fields = append(fields, apperr.Field("template", "must name a catalog template"))
	}
	in.Name = strings.TrimSpace(in.Name)
	if len(in.Name) > MaxName {
		fields = append(fields, apperr.Field("name", fmt.Sprintf("at most %d characters", MaxName)))
	}
	tags, err := normalizeTags(in.Tags)
	if err != nil {
		e, _ := apperr.As(err)
		fields = append(fields, e.Fields...)
	}
	if len(fields) > 0 {
		return Record{}, apperr.Validation("invalid session", fields...)
	}
	t, err := s.templates.Get(ctx, catalog.ScopeTenant, name)
	if err != nil {
		return Record{}, err
	}
	settings, err := s.store.Settings(ctx)
	if err != nil {
		return Record{}, err
	}
	cpu, mem, err := requests(t.Spec, in.Resources, settings)
	if err != nil {
		return Record{}, err
	}
	idle := t.IdleTimeoutSeconds
	if idle <= 0 {
		idle = settings.IdleTimeoutSeconds
	}
	if in.IdleTimeoutSeconds != nil {
		v := *in.IdleTimeoutSeconds
		if v < catalog.MinIdleTimeout || v > idle {
			return Record{}, apperr.Validation("invalid idle timeout", apperr.Field("idle_timeout_seconds",
				fmt.Sprintf("between %d and the template's %d seconds", catalog.MinIdleTimeout, idle)))
		}
		idle = v
	}
	maxDur := t.MaxDurationSeconds
	if maxDur <= 0 {
		maxDur = settings.MaxDurationSeconds
	}
	if in.Name == "" {
		in.Name = t.DisplayName
	}
	id := NewID()
	res := t.Resources
	if in.Resources != nil {
		if in.Resources.CPU != "" {
			res.Requests.CPU = in.Resources.CPU
		}
		if in.Resources.Memory != "" {
			res.Requests.Memory = in.Resources.Memory
		}
	}
	rendered, err := json.Marshal(spec.Session{SessionID: string(id), Owner: p.Subject, Template: string(t.Name), Image: t.Image, Env: t.Env,
		Resources: res, CPUMillis: cpu, MemoryBytes: mem, Home: t.Home, Volumes: t.Volumes, Ports: t.Ports, Capabilities: t.Capabilities})
	if err != nil {
		return Record{}, fmt.Errorf("encoding agent spec: %w", err)
	}
	agentTags := t.AgentTags
	if agentTags == nil {
		agentTags = []string{}
	}
	return Record{Spec: rendered, Session: Session{
		ID: id, Owner: p.Subject, Name: in.Name, Template: string(t.Name), TemplateScope: string(t.Scope),
		TemplateVersion: t.Version, Tags: tags, CPUMillis: cpu, MemoryBytes: mem, AgentTags: agentTags,
		Desired: DesiredRunning, Generation: 1, Phase: PhasePending, Reason: ReasonCreated,
		IdleTimeoutSeconds: idle, MaxDurationSeconds: maxDur,
	}}, nil
}

// requests returns the session's CPU and memory requests: the template's (or the
// defaults), replaced by an override that stays within the template's limits or, without
// limits, the tenant's per-session maximum.
func requests(tpl catalog.Spec, o *ResourceOverride, st Settings) (cpu, mem int64, err error) {
	cpu, mem = DefaultCPUMillis, DefaultMemoryBytes
	if v := tpl.Resources.Requests.CPU; v != "" {
		if cpu, err = catalog.ParseCPU(v); err != nil {
			return 0, 0, apperr.Wrap(err, apperr.Invalid, "the template's CPU request is invalid")
		}
	}
	if v := tpl.Resources.Requests.Memory; v != "" {
		if mem, err = catalog.ParseMemory(v); err != nil {
			return 0, 0, apperr.Wrap(err, apperr.Invalid, "the template's memory request is invalid")
		}
	}
	if o == nil {
		return cpu, mem, nil
	}
	maxCPU, maxMem := st.MaxSessionCPUMillis, st.MaxSessionMemoryBytes
	if v, err := catalog.ParseCPU(tpl.Resources.Limits.CPU); err == nil {
		maxCPU = v
	}
	if v, err := catalog.ParseMemory(tpl.Resources.Limits.Memory); err == nil {
		maxMem = v
	}
	var fields []apperr.FieldError
	if o.CPU != "" {
		v, err := catalog.ParseCPU(o.CPU)
		switch {
		case err != nil:
			fields = append(fields, apperr.Field("resources/cpu", err.Error()))
		case v > maxCPU:
			fields = append(fields, apperr.Field("resources/cpu", fmt.Sprintf("at most %dm (the template's limit)", maxCPU)))
		default:
			cpu = v
		}
	}
	if o.Memory != "" {
		v, err := catalog.ParseMemory(o.Memory)
		switch {
		case err != nil:
			fields = append(fields, apperr.Field("resources/memory", err.Error()))
		case v > maxMem:
			fields = append(fields, apperr.Field("resources/memory", fmt.Sprintf("at most %d bytes (the template's limit)", maxMem)))
		default:
			mem = v
		}
	}
	if len(fields) > 0 {
		return 0, 0, apperr.Validation("invalid resource override", fields...)
	}
	return cpu, mem, nil
}

// cursorPrefix versions the cursor format.
const cursorPrefix = "c1:"

// EncodeCursor returns the opaque cursor after s.
func EncodeCursor(s Session) string {
	return base64.RawURLEncoding.EncodeToString([]byte(cursorPrefix + strconv.FormatInt(s.CreatedAt.UnixMicro(), 10) + ":" + string(s.ID)))
}

func decodeCursor(c string) (*Cursor, error) {
	if c == "" {
		return nil, nil
	}
	bad := apperr.Validation("invalid cursor", apperr.Field("cursor", "is not a cursor this API returned"))
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || !strings.HasPrefix(string(b), cursorPrefix) {
		return nil, bad
	}
	ts, id, ok := strings.Cut(string(b[len(cursorPrefix):]), ":")
	n, err := strconv.ParseInt(ts, 10, 64)
	if !ok || err != nil || !idPattern.MatchString(id) {
		return nil, bad
	}
	return &Cursor{CreatedAt: time.UnixMicro(n), ID: ID(id)}, nil
}

func (s *service) List(ctx context.Context, q Query) (Page, error) {
	p, scope, err := caller(ctx, false)
	if err != nil {
		return Page{}, err
	}
	if q.Mine {
		scope.Owner = p.Subject
	}
	owner := ""
	if q.Owner != "" && scope.Owner == "" {
		owner = q.Owner
	}
	before, err := decodeCursor(q.Cursor)
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
	if q.Phase != "" && !validPhase(q.Phase) {
		return Page{}, apperr.Validation("invalid filter", apperr.Field("phase", "must be one of the phases"))
	}
	if len(q.Tag) > 63 || len(q.Owner) > 200 {
		return Page{}, apperr.Validation("invalid filter", apperr.Field("tag", "filters must be short"))
	}
	items, err := s.store.List(ctx, scope, StoreQuery{Phase: q.Phase, Tag: q.Tag, Owner: owner, Before: before, Limit: limit})
	if err != nil {
		return Page{}, err
	}
	page := Page{Items: items}
	if len(items) > limit {
		page.Items = items[:limit]
		page.NextCursor = EncodeCursor(items[limit-1])
	}
	if page.Items == nil {
		page.Items = []Session{}
	}
	return page, nil
}

func validPhase(p Phase) bool {
	for _, x := range Phases {
		if x == p {
			return true
		}
	}
	return false
}

func (s *service) Get(ctx context.Context, id ID) (Session, error) {
	_, scope, err := caller(ctx, false)
	if err != nil {
		return Session{}, err
	}
	if _, err := ParseID(string(id)); err != nil {
		return Session{}, err
	}
	return s.store.Get(ctx, id, scope)
}

// act applies a user's action through the state machine.
func (s *service) act(ctx context.Context, id ID, a Action) (Session, error) {
	p, scope, err := caller(ctx, true)
	if err != nil {
		return Session{}, err
	}
	if _, err := ParseID(string(id)); err != nil {
		return Session{}, err
	}
	return s.store.Transition(ctx, id, scope, Actor(p), func(cur Session) (Decision, error) {
		return Decide(cur, a, "", "")
	})
}

func (s *service) Hibernate(ctx context.Context, id ID) (Session, error) {
	return s.act(ctx, id, ActionHibernate)
}

func (s *service) Wake(ctx context.Context, id ID) (Session, error) {
	return s.act(ctx, id, ActionWake)
}

func (s *service) Stop(ctx context.Context, id ID) (Session, error) {
	return s.act(ctx, id, ActionStop)
}

func (s *service) Delete(ctx context.Context, id ID) error {
	_, err := s.act(ctx, id, ActionDelete)
	return err
}

func (s *service) SetTags(ctx context.Context, id ID, tags []string) (Session, error) {
	p, scope, err := caller(ctx, true)
	if err != nil {
		return Session{}, err
	}
	if _, err := ParseID(string(id)); err != nil {
		return Session{}, err
	}
	tags, err = normalizeTags(tags)
	if err != nil {
		return Session{}, err
	}
	return s.store.SetTags(ctx, id, scope, tags, Actor(p))
}

func (s *service) Events(ctx context.Context, id ID) ([]Event, error) {
	_, scope, err := caller(ctx, false)
	if err != nil {
		return nil, err
	}
	if _, err := ParseID(string(id)); err != nil {
		return nil, err
	}
	return s.store.Events(ctx, id, scope)
}

func (s *service) Heartbeat(ctx context.Context, id ID) error {
	_, scope, err := caller(ctx, true)
	if err != nil {
		return err
	}
	if _, err := ParseID(string(id)); err != nil {
		return err
	}
	return s.store.Touch(ctx, id, scope)
}

func (s *service) Settings(ctx context.Context) (Settings, error) {
	if _, _, err := caller(ctx, false); err != nil {
		return Settings{}, err
	}
	if _, err := auth.RequireRole(ctx, auth.RoleAdmin); err != nil {
		return Settings{}, err
	}
	return s.store.Settings(ctx)
}

func validQuota(field string, q Quota) []apperr.FieldError {
	var out []apperr.FieldError
	for name, v := range map[string]*int64{"max_sessions": q.MaxSessions, "max_cpu_millis": q.MaxCPUMillis, "max_memory_bytes": q.MaxMemoryBytes} {
		if v != nil && *v < 0 {
			out = append(out, apperr.Field(field+name, "must not be negative"))
		}
	}
	return out
}

func (s *service) SetSettings(ctx context.Context, st Settings) (Settings, error) {
	if _, _, err := caller(ctx, true); err != nil {
		return Settings{}, err
	}
	p, err := auth.RequireRole(ctx, auth.RoleAdmin)
	if err != nil {
		return Settings{}, err
	}
	fields := append(validQuota("tenant/", st.Tenant), validQuota("user/", st.User)...)
	if st.IdleTimeoutSeconds != 0 && (st.IdleTimeoutSeconds < catalog.MinIdleTimeout || st.IdleTimeoutSeconds > catalog.MaxIdleTimeout) {
		fields = append(fields, apperr.Field("idle_timeout_seconds", fmt.Sprintf("between %d and %d", catalog.MinIdleTimeout, catalog.MaxIdleTimeout)))
	}
	if st.MaxDurationSeconds != 0 && (st.MaxDurationSeconds < catalog.MinMaxDuration || st.MaxDurationSeconds > catalog.MaxDuration) {
		fields = append(fields, apperr.Field("max_duration_seconds", fmt.Sprintf("between %d and %d", catalog.MinMaxDuration, catalog.MaxDuration)))
	}
	if st.MaxSessionCPUMillis < 0 || st.MaxSessionMemoryBytes < 0 {
		fields = append(fields, apperr.Field("max_session_cpu_millis", "must not be negative"))
	}
	if len(fields) > 0 {
		return Settings{}, apperr.Validation("invalid settings", fields...)
	}
	if err := s.store.SetSettings(ctx, st, Actor(p)); err != nil {
		return Settings{}, err
	}
	return s.store.Settings(ctx)
}

func (s *service) SetUserQuota(ctx context.Context, user string, q Quota) error {
	if _, _, err := caller(ctx, true); err != nil {
		return err
	}
	p, err := auth.RequireRole(ctx, auth.RoleAdmin)
	if err != nil {
		return err
	}
	if user == "" || len(user) > 200 {
		return apperr.Validation("invalid user", apperr.Field("user", "must name a user"))
	}
	if fields := validQuota("", q); len(fields) > 0 {
		return apperr.Validation("invalid quota", fields...)
	}
	return s.store.SetUserQuota(ctx, user, q, Actor(p))
}
