package scheduler

import (
	"context"
	_ "embed"
	"log/slog"
	"net/http"

	"github.com/go-kit/kit/endpoint"
	kithttp "github.com/go-kit/kit/transport/http"

	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/kitx"
)

type service struct{ store Store }

// NewService returns the admin API over store.
func NewService(store Store) Service { return &service{store: store} }

func (s *service) Agents(ctx context.Context) ([]Candidate, error) {
	if _, err := auth.RequireRole(ctx, auth.RoleAdmin); err != nil {
		return nil, err
	}
	return s.store.Candidates(ctx)
}

// Endpoints are the scheduler's go-kit endpoints.
type Endpoints struct {
	Agents endpoint.Endpoint
}

// AgentsResponse lists agents with their load.
type AgentsResponse struct {
	Items []Candidate `json:"items"`
}

// Empty is a request without fields.
type Empty struct{}

// MakeEndpoints builds the endpoints of s.
func MakeEndpoints(s Service) Endpoints {
	return Endpoints{Agents: kitx.Endpoint(func(ctx context.Context, _ Empty) (AgentsResponse, error) {
		items, err := s.Agents(ctx)
		return AgentsResponse{Items: items}, err
	})}
}

// OpenAPIPath serves the scheduler's OpenAPI document.
const OpenAPIPath = "/api/v1/scheduler/openapi.json"

//go:embed openapi.json
var openAPI []byte

// Route is one served route (see kitx.Route).
type Route = kitx.Route

// MakeRoutes returns the scheduler's routes; all but the OpenAPI document expect the
// caller's principal (auth.Middleware), which the module adds.
func MakeRoutes(e Endpoints, logger *slog.Logger) []Route {
	return []Route{
		{Method: http.MethodGet, Pattern: OpenAPIPath, Public: true, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(openAPI)
		})},
		{Method: http.MethodGet, Pattern: "/api/v1/scheduler/agents", Handler: kithttp.NewServer(e.Agents,
			func(context.Context, *http.Request) (any, error) { return Empty{}, nil }, kitx.EncodeJSON(http.StatusOK),
			kitx.ServerOptions(logger)...)},
	}
}
