package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/propagation"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/auth"
)

// Limits on admin input.
const (
	maxTags      = 32
	maxTagLength = 63
	maxSpec      = 256 << 10
)

var (
	tagPattern       = regexp.MustCompile(`^[a-z0-9]([a-z0-9._/=-]*[a-z0-9])?$`)
	sessionIDPattern = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,128}$`)
)

type service struct {
	store Store
	// revoke closes an agent's tunnel at once when this replica holds it; other replicas
	// learn of the deletion from its NOTIFY.
	revoke func(AgentID)
}

// NewService returns the gateway's admin and assignment logic over store. revoke, if not
// nil, is called after an agent is deleted.
func NewService(store Store, revoke func(AgentID)) Service {
	if revoke == nil {
		revoke = func(AgentID) {}
	}
	return &service{store: store, revoke: revoke}
}

func requireAdmin(ctx context.Context, scope string) error {
	if _, err := auth.RequireRole(ctx, auth.RoleAdmin); err != nil {
		return err
	}
	_, err := auth.RequireScope(ctx, scope)
	return err
}

// Agents implements Service.
func (s *service) Agents(ctx context.Context) ([]Agent, error) {
	if err := requireAdmin(ctx, auth.ScopeAgentsRead); err != nil {
		return nil, err
	}
	return s.store.Agents(ctx)
}

// Agent implements Service.
func (s *service) Agent(ctx context.Context, id AgentID) (Agent, error) {
	if err := requireAdmin(ctx, auth.ScopeAgentsRead); err != nil {
		return Agent{}, err
	}
	if _, err := ParseAgentID(string(id)); err != nil {
		return Agent{}, err
	}
	return s.store.Agent(ctx, id)
}

func normalizeTags(tags []string) ([]string, error) {
	if len(tags) > maxTags {
		return nil, apperr.Validation("too many tags", apperr.Field("tags", "at most 32"))
	}
	out := make([]string, 0, len(tags))
	seen := map[string]bool{}
	for i, t := range tags {
		t = strings.ToLower(strings.TrimSpace(t))
		if len(t) > maxTagLength || !tagPattern.MatchString(t) {
			return nil, apperr.Validation("invalid tag", apperr.Field("tags/"+strconv.Itoa(i), "lowercase letters, digits and . _ / = -, at most 63 characters"))
		}
		if !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	return out, nil
}

// UpdateAgent implements Service.
func (s *service) UpdateAgent(ctx context.Context, id AgentID, p AgentPatch) (Agent, error) {
	if err := requireAdmin(ctx, auth.ScopeAgentsWrite); err != nil {
		return Agent{}, err
	}
	if _, err := ParseAgentID(string(id)); err != nil {
		return Agent{}, err
	}
	if p.Name != nil {
		n := strings.TrimSpace(*p.Name)
		if n == "" || len(n) > 100 {
			return Agent{}, apperr.Validation("invalid name", apperr.Field("name", "1 to 100 characters"))
		}
		p.Name = &n
	}
	if p.Tags != nil {
		tags, err := normalizeTags(*p.Tags)
		if err != nil {
			return Agent{}, err
		}
		p.Tags = &tags
	}
	return s.store.UpdateAgent(ctx, id, p)
}

// DeleteAgent implements Service.
func (s *service) DeleteAgent(ctx context.Context, id AgentID) error {
	if err := requireAdmin(ctx, auth.ScopeAgentsWrite); err != nil {
		return err
	}
	if _, err := ParseAgentID(string(id)); err != nil {
		return err
	}
	if err := s.store.DeleteAgent(ctx, id); err != nil {
		return err
	}
	s.revoke(id)
	return nil
}

// MaxAssignBatch bounds the inputs of one AssignMany.
const MaxAssignBatch = 1000

// Assign implements Service.
func (s *service) Assign(ctx context.Context, in AssignmentInput) (Assignment, error) {
	if err := requireAdmin(ctx, auth.ScopeAgentsWrite); err != nil {
		return Assignment{}, err
	}
	if fields := checkAssignment(in, ""); len(fields) > 0 {
		return Assignment{}, apperr.Validation("invalid assignment", fields...)
	}
	return s.store.Assign(ctx, in, traceParent(ctx))
}

// AssignMany implements Service.
func (s *service) AssignMany(ctx context.Context, ins []AssignmentInput) ([]AssignResult, error) {
	if err := requireAdmin(ctx, auth.ScopeAgentsWrite); err != nil {
		return nil, err
	}
	if len(ins) > MaxAssignBatch {
		return nil, apperr.Validation("too many assignments", apperr.Field("items", fmt.Sprintf("at most %d", MaxAssignBatch)))
	}
	var fields []apperr.FieldError
	seen := make(map[SessionID]bool, len(ins))
	for i, in := range ins {
		at := "items/" + strconv.Itoa(i) + "/"
		fields = append(fields, checkAssignment(in, at)...)
		if seen[in.SessionID] {
			fields = append(fields, apperr.Field(at+"session_id", "names a session already in the batch"))
		}
		seen[in.SessionID] = true
	}
	if len(fields) > 0 {
		return nil, apperr.Validation("invalid assignments", fields...)
	}
	return s.store.AssignMany(ctx, ins, traceParent(ctx))
}

// checkAssignment validates one input; at prefixes the field names.
func checkAssignment(in AssignmentInput, at string) []apperr.FieldError {
	var fields []apperr.FieldError
	if !sessionIDPattern.MatchString(string(in.SessionID)) {
		fields = append(fields, apperr.Field(at+"session_id", "1 to 128 characters of letters, digits and _ . : -"))
	}
	if !agentIDPattern.MatchString(string(in.AgentID)) {
		fields = append(fields, apperr.Field(at+"agent_id", "not an agent id"))
	}
	if !in.Desired.Valid() {
		fields = append(fields, apperr.Field(at+"desired", "running, hibernated, stopped or deleted"))
	}
	if len(in.Spec) > maxSpec {
		fields = append(fields, apperr.Field(at+"spec", "at most 256 KiB"))
	} else if len(in.Spec) > 0 {
		var obj map[string]json.RawMessage
		if json.Unmarshal(in.Spec, &obj) != nil || obj == nil {
			fields = append(fields, apperr.Field(at+"spec", "must be a JSON object"))
		}
	}
	return fields
}

// Unassign implements Service.
func (s *service) Unassign(ctx context.Context, id SessionID) error {
	if err := requireAdmin(ctx, auth.ScopeAgentsWrite); err != nil {
		return err
	}
	if !sessionIDPattern.MatchString(string(id)) {
		return apperr.Validation("invalid session id", apperr.Field("session", "1 to 128 characters of letters, digits and _ . : -"))
	}
	return s.store.Unassign(ctx, id, traceParent(ctx))
}

// traceParent renders the W3C traceparent of ctx's span, "" without one, so the delivery
// of this write joins the writer's trace even though it happens on another replica.
func traceParent(ctx context.Context) string {
	c := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, c)
	return c["traceparent"]
}

// Assignment implements Service.
func (s *service) Assignment(ctx context.Context, id SessionID) (Assignment, error) {
	if err := requireAdmin(ctx, auth.ScopeAgentsRead); err != nil {
		return Assignment{}, err
	}
	return s.store.Assignment(ctx, id)
}

// AgentAssignments implements Service.
func (s *service) AgentAssignments(ctx context.Context, id AgentID) ([]Assignment, error) {
	if _, err := s.Agent(ctx, id); err != nil {
		return nil, err
	}
	return s.store.AgentAssignments(ctx, id)
}

// SessionStatus implements Service.
func (s *service) SessionStatus(ctx context.Context, id SessionID) (SessionStatus, error) {
	if err := requireAdmin(ctx, auth.ScopeAgentsRead); err != nil {
		return SessionStatus{}, err
	}
	return s.store.SessionStatus(ctx, id)
}

// AgentSessionStatus implements Service.
func (s *service) AgentSessionStatus(ctx context.Context, id AgentID) ([]SessionStatus, error) {
	if _, err := s.Agent(ctx, id); err != nil {
		return nil, err
	}
	return s.store.AgentSessionStatus(ctx, id)
}
