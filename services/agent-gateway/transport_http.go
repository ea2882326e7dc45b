package gateway

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/go-kit/kit/endpoint"
	kithttp "github.com/go-kit/kit/transport/http"

	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/kitx"
)

// maxBody bounds admin request bodies; an assignment's spec is the largest.
const maxBody = maxSpec + 4<<10

// maxBatchBody bounds a batch of assignments: specs are small in practice, and a batch of
// the largest ones would be too big for one request anyway.
const maxBatchBody = 16 << 20

// Route is one served route: its ServeMux pattern and handler.
type Route struct {
	Pattern string
	handler http.Handler
}

// Routes returns the admin API over e, every route behind auth.Middleware with v.
func Routes(e Endpoints, v *auth.Verifier, logger *slog.Logger) []Route {
	opts := kitx.ServerOptions(logger)
	json := func(ep endpoint.Endpoint, dec kithttp.DecodeRequestFunc, status int) http.Handler {
		return auth.Middleware(v)(kithttp.NewServer(ep, dec, kitx.EncodeJSON(status), opts...))
	}
	return []Route{
		{Pattern: "GET /api/v1/agents", handler: json(e.ListAgents, decodeEmpty, http.StatusOK)},
		{Pattern: "GET /api/v1/agents/{id}", handler: json(e.GetAgent, decodeAgent, http.StatusOK)},
		{Pattern: "PATCH /api/v1/agents/{id}", handler: json(e.UpdateAgent, decodeUpdateAgent, http.StatusOK)},
		{Pattern: "POST /api/v1/agents/{id}/drain", handler: json(e.DrainAgent, decodeAgent, http.StatusOK)},
		{Pattern: "DELETE /api/v1/agents/{id}", handler: json(e.DeleteAgent, decodeAgent, http.StatusNoContent)},
		{Pattern: "GET /api/v1/agents/{id}/assignments", handler: json(e.AgentAssignments, decodeAgent, http.StatusOK)},
		{Pattern: "GET /api/v1/agents/{id}/session-status", handler: json(e.AgentSessionStatus, decodeAgent, http.StatusOK)},
		{Pattern: "PUT /api/v1/assignments/{session}", handler: json(e.Assign, decodeAssign, http.StatusOK)},
		{Pattern: "POST /api/v1/assignments", handler: json(e.AssignMany, kitx.DecodeJSON[AssignManyBody](maxBatchBody), http.StatusOK)},
		{Pattern: "DELETE /api/v1/assignments/{session}", handler: json(e.Unassign, decodeSession, http.StatusNoContent)},
		{Pattern: "GET /api/v1/assignments/{session}", handler: json(e.GetAssignment, decodeSession, http.StatusOK)},
		{Pattern: "GET /api/v1/session-status/{session}", handler: json(e.SessionStatus, decodeSession, http.StatusOK)},
	}
}

func decodeEmpty(context.Context, *http.Request) (any, error) { return Empty{}, nil }

func decodeAgent(_ context.Context, r *http.Request) (any, error) {
	return AgentRequest{ID: AgentID(r.PathValue("id"))}, nil
}

func decodeSession(_ context.Context, r *http.Request) (any, error) {
	return SessionRequest{ID: SessionID(r.PathValue("session"))}, nil
}

func decodeUpdateAgent(ctx context.Context, r *http.Request) (any, error) {
	p, err := kitx.DecodeJSON[AgentPatch](maxBody)(ctx, r)
	if err != nil {
		return nil, err
	}
	return UpdateAgentRequest{ID: AgentID(r.PathValue("id")), Patch: p.(AgentPatch)}, nil
}

func decodeAssign(ctx context.Context, r *http.Request) (any, error) {
	b, err := kitx.DecodeJSON[AssignBody](maxBody)(ctx, r)
	if err != nil {
		return nil, err
	}
	return AssignRequest{ID: SessionID(r.PathValue("session")), Body: b.(AssignBody)}, nil
}
