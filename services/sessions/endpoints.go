package sessions

import (
	"context"
	"net/http"

	"github.com/go-kit/kit/endpoint"

	"streamspace.dev/libs/kitx"
)

// Endpoints are the sessions service's go-kit endpoints, one per Service method.
type Endpoints struct {
	Create       endpoint.Endpoint
	List         endpoint.Endpoint
	Get          endpoint.Endpoint
	Hibernate    endpoint.Endpoint
	Wake         endpoint.Endpoint
	Stop         endpoint.Endpoint
	Delete       endpoint.Endpoint
	SetTags      endpoint.Endpoint
	Events       endpoint.Endpoint
	Heartbeat    endpoint.Endpoint
	Settings     endpoint.Endpoint
	SetSettings  endpoint.Endpoint
	SetUserQuota endpoint.Endpoint
}

// MakeEndpoints builds the endpoints of s.
func MakeEndpoints(s Service) Endpoints {
	action := func(f func(context.Context, ID) (Session, error)) endpoint.Endpoint {
		return kitx.Endpoint(func(ctx context.Context, r IDRequest) (SessionResponse, error) {
			sess, err := f(ctx, r.ID)
			return SessionResponse{Session: sess}, err
		})
	}
	return Endpoints{
		Create: kitx.Endpoint(func(ctx context.Context, r CreateRequest) (SessionResponse, error) {
			sess, replayed, err := s.Create(ctx, r.Session, r.IdempotencyKey)
			// A replay answers exactly as the first call did (201), and says so in a header.
			return SessionResponse{Session: sess, Status: http.StatusCreated, Location: true, Replayed: replayed}, err
		}),
		List:      kitx.Endpoint(func(ctx context.Context, r ListRequest) (Page, error) { return s.List(ctx, r.Query) }),
		Get:       action(s.Get),
		Hibernate: action(s.Hibernate),
		Wake:      action(s.Wake),
		Stop:      action(s.Stop),
		Delete: kitx.Endpoint(func(ctx context.Context, r IDRequest) (NoContent, error) {
			return NoContent{}, s.Delete(ctx, r.ID)
		}),
		SetTags: kitx.Endpoint(func(ctx context.Context, r TagsRequest) (SessionResponse, error) {
			sess, err := s.SetTags(ctx, r.ID, r.Tags)
			return SessionResponse{Session: sess}, err
		}),
		Events: kitx.Endpoint(func(ctx context.Context, r IDRequest) (EventsResponse, error) {
			ev, err := s.Events(ctx, r.ID)
			return EventsResponse{Items: ev}, err
		}),
		Heartbeat: kitx.Endpoint(func(ctx context.Context, r IDRequest) (NoContent, error) {
			return NoContent{}, s.Heartbeat(ctx, r.ID)
		}),
		Settings: kitx.Endpoint(func(ctx context.Context, _ Empty) (Settings, error) { return s.Settings(ctx) }),
		SetSettings: kitx.Endpoint(func(ctx context.Context, r Settings) (Settings, error) {
			return s.SetSettings(ctx, r)
		}),
		SetUserQuota: kitx.Endpoint(func(ctx context.Context, r UserQuotaRequest) (NoContent, error) {
			return NoContent{}, s.SetUserQuota(ctx, r.User, r.Quota)
		}),
	}
}

// Request and response types of the endpoints.
type (
	// Empty is a request without fields.
	Empty struct{}
	// CreateRequest creates a session.
	CreateRequest struct {
		Session        NewSession
		IdempotencyKey string
	}
	// ListRequest asks for a page of sessions.
	ListRequest struct{ Query Query }
	// IDRequest names a session.
	IDRequest struct{ ID ID }
	// TagsRequest replaces a session's tags.
	TagsRequest struct {
		ID   ID
		Tags []string
	}
	// UserQuotaRequest sets a user's quota override.
	UserQuotaRequest struct {
		User  string
		Quota Quota
	}
	// EventsResponse is a session's history.
	EventsResponse struct {
		Items []Event `json:"items"`
	}
)

// SessionResponse is one session; after a create, with 201 and its Location, and on a
// replayed create with Idempotent-Replayed: true.
type SessionResponse struct {
	Session
	Status   int  `json:"-"`
	Location bool `json:"-"`
	Replayed bool `json:"-"`
}

// StatusCode implements kithttp.StatusCoder.
func (r SessionResponse) StatusCode() int {
	if r.Status != 0 {
		return r.Status
	}
	return http.StatusOK
}

// Headers implements kithttp.Headerer.
func (r SessionResponse) Headers() http.Header {
	h := http.Header{}
	if r.Location {
		h.Set("Location", "/api/v1/sessions/"+string(r.ID))
	}
	if r.Replayed {
		h.Set("Idempotent-Replayed", "true")
	}
	return h
}

// NoContent is an empty 204 answer.
type NoContent struct{}

// StatusCode implements kithttp.StatusCoder.
func (NoContent) StatusCode() int { return http.StatusNoContent }
