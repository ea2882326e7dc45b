package gateway

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/go-kit/kit/endpoint"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/kitx"
)

// Endpoints are the gateway's go-kit endpoints, one per Service method.
type Endpoints struct {
	ListAgents         endpoint.Endpoint
	GetAgent           endpoint.Endpoint
	UpdateAgent        endpoint.Endpoint
	DrainAgent         endpoint.Endpoint
	DeleteAgent        endpoint.Endpoint
	Assign             endpoint.Endpoint
	AssignMany         endpoint.Endpoint
	Unassign           endpoint.Endpoint
	GetAssignment      endpoint.Endpoint
	AgentAssignments   endpoint.Endpoint
	SessionStatus      endpoint.Endpoint
	AgentSessionStatus endpoint.Endpoint
}

// Request and response types of the endpoints.
type (
	// Empty is a request without fields.
	Empty struct{}
	// AgentRequest names an agent.
	AgentRequest struct{ ID AgentID }
	// UpdateAgentRequest patches an agent.
	UpdateAgentRequest struct {
		ID    AgentID
		Patch AgentPatch
	}
	// SessionRequest names a session.
	SessionRequest struct{ ID SessionID }
	// AssignRequest sets a session's assignment; the session id comes from the path.
	AssignRequest struct {
		ID   SessionID
		Body AssignBody
	}
	// AssignBody is the JSON body of PUT /api/v1/assignments/{session}.
	AssignBody struct {
		AgentID AgentID         `json:"agent_id"`
		Desired Desired         `json:"desired"`
		Spec    json.RawMessage `json:"spec,omitempty"`
		// Move lets the session leave another agent (see AssignmentInput.Move).
		Move bool `json:"move,omitempty"`
	}
	// AssignManyBody is the JSON body of POST /api/v1/assignments: a batch.
	AssignManyBody struct {
		Items []AssignmentInput `json:"items"`
	}
	// AssignItem is one input's outcome in a batch's response: its assignment, or the
	// problem that input alone met.
	AssignItem struct {
		Assignment *Assignment     `json:"assignment,omitempty"`
		Error      *apperr.Problem `json:"error,omitempty"`
	}
	// ListResponse wraps a list, so it can grow paging fields without breaking clients.
	ListResponse[T any] struct {
		Items []T `json:"items"`
	}
	// NoContent is an empty 204 response.
	NoContent struct{}
)

// StatusCode implements kithttp.StatusCoder.
func (NoContent) StatusCode() int { return http.StatusNoContent }

// MakeEndpoints returns the endpoints over s, each wrapped by mw in order.
func MakeEndpoints(s Service, mw ...func(name string, e endpoint.Endpoint) endpoint.Endpoint) Endpoints {
	wrap := func(name string, e endpoint.Endpoint) endpoint.Endpoint {
		for _, m := range mw {
			e = m(name, e)
		}
		return e
	}
	return Endpoints{
		ListAgents: wrap("list_agents", kitx.Endpoint(func(ctx context.Context, _ Empty) (ListResponse[Agent], error) {
			a, err := s.Agents(ctx)
			return ListResponse[Agent]{Items: a}, err
		})),
		GetAgent: wrap("get_agent", kitx.Endpoint(func(ctx context.Context, r AgentRequest) (Agent, error) {
			return s.Agent(ctx, r.ID)
		})),
		UpdateAgent: wrap("update_agent", kitx.Endpoint(func(ctx context.Context, r UpdateAgentRequest) (Agent, error) {
			return s.UpdateAgent(ctx, r.ID, r.Patch)
		})),
		DrainAgent: wrap("drain_agent", kitx.Endpoint(func(ctx context.Context, r AgentRequest) (Agent, error) {
			yes := true
			return s.UpdateAgent(ctx, r.ID, AgentPatch{Draining: &yes})
		})),
		DeleteAgent: wrap("delete_agent", kitx.Endpoint(func(ctx context.Context, r AgentRequest) (NoContent, error) {
			return NoContent{}, s.DeleteAgent(ctx, r.ID)
		})),
		Assign: wrap("assign", kitx.Endpoint(func(ctx context.Context, r AssignRequest) (Assignment, error) {
			return s.Assign(ctx, AssignmentInput{SessionID: r.ID, AgentID: r.Body.AgentID, Desired: r.Body.Desired, Spec: r.Body.Spec,
				Move: r.Body.Move})
		})),
		AssignMany: wrap("assign_many", kitx.Endpoint(func(ctx context.Context, r AssignManyBody) (ListResponse[AssignItem], error) {
			res, err := s.AssignMany(ctx, r.Items)
			items := make([]AssignItem, len(res))
			for i, x := range res {
				if x.Err != nil {
					p := apperr.ProblemOf(x.Err)
					items[i].Error = &p
				} else {
					items[i].Assignment = &x.Assignment
				}
			}
			return ListResponse[AssignItem]{Items: items}, err
		})),
		Unassign: wrap("unassign", kitx.Endpoint(func(ctx context.Context, r SessionRequest) (NoContent, error) {
			return NoContent{}, s.Unassign(ctx, r.ID)
		})),
		GetAssignment: wrap("get_assignment", kitx.Endpoint(func(ctx context.Context, r SessionRequest) (Assignment, error) {
			return s.Assignment(ctx, r.ID)
		})),
		AgentAssignments: wrap("agent_assignments", kitx.Endpoint(func(ctx context.Context, r AgentRequest) (ListResponse[Assignment], error) {
			a, err := s.AgentAssignments(ctx, r.ID)
			return ListResponse[Assignment]{Items: a}, err
		})),
		SessionStatus: wrap("session_status", kitx.Endpoint(func(ctx context.Context, r SessionRequest) (SessionStatus, error) {
			return s.SessionStatus(ctx, r.ID)
		})),
		AgentSessionStatus: wrap("agent_session_status", kitx.Endpoint(func(ctx context.Context, r AgentRequest) (ListResponse[SessionStatus], error) {
			a, err := s.AgentSessionStatus(ctx, r.ID)
			return ListResponse[SessionStatus]{Items: a}, err
		})),
	}
}
