package catalog

import (
	"context"
	"net/http"

	"github.com/go-kit/kit/endpoint"

	"streamspace.dev/libs/kitx"
)

// Endpoints are the catalog's go-kit endpoints, one per Service method. Every request
// names its scope, so the same endpoints serve the tenant and the platform routes.
type Endpoints struct {
	List       endpoint.Endpoint
	Get        endpoint.Endpoint
	Create     endpoint.Endpoint
	Update     endpoint.Endpoint
	SetEnabled endpoint.Endpoint
	Delete     endpoint.Endpoint
	Import     endpoint.Endpoint
}

// MakeEndpoints builds the endpoints of s.
func MakeEndpoints(s Service) Endpoints {
	return Endpoints{
		List: kitx.Endpoint(func(ctx context.Context, r ListRequest) (Page, error) {
			return s.List(ctx, r.Scope, r.Query)
		}),
		Get: kitx.Endpoint(func(ctx context.Context, r GetRequest) (TemplateResponse, error) {
			t, err := s.Get(ctx, r.Scope, r.Name)
			return TemplateResponse{Template: t}, err
		}),
		Create: kitx.Endpoint(func(ctx context.Context, r CreateRequest) (TemplateResponse, error) {
			t, err := s.Create(ctx, r.Scope, r.Template)
			return TemplateResponse{Template: t, Status: http.StatusCreated, Location: true}, err
		}),
		Update: kitx.Endpoint(func(ctx context.Context, r UpdateRequest) (TemplateResponse, error) {
			t, err := s.Update(ctx, r.Scope, r.Name, r.Update)
			return TemplateResponse{Template: t}, err
		}),
		SetEnabled: kitx.Endpoint(func(ctx context.Context, r SetEnabledRequest) (TemplateResponse, error) {
			t, err := s.SetEnabled(ctx, r.Scope, r.Name, r.Enabled, r.If)
			return TemplateResponse{Template: t}, err
		}),
		Delete: kitx.Endpoint(func(ctx context.Context, r DeleteRequest) (NoContent, error) {
			return NoContent{}, s.Delete(ctx, r.Scope, r.Name, r.If)
		}),
		Import: kitx.Endpoint(func(ctx context.Context, r ImportRequest) (ImportReport, error) {
			return s.Import(ctx, r.Scope, r.YAML)
		}),
	}
}

// ListRequest asks for a page of templates.
type ListRequest struct {
	Scope Scope
	Query Query
}

// GetRequest asks for one template.
type GetRequest struct {
	Scope Scope
	Name  TemplateName
}

// CreateRequest creates a template.
type CreateRequest struct {
	Scope    Scope
	Template NewTemplate
}

// UpdateRequest replaces a template's spec.
type UpdateRequest struct {
	Scope  Scope
	Name   TemplateName
	Update Update
}

// SetEnabledRequest enables or disables a template.
type SetEnabledRequest struct {
	Scope   Scope
	Name    TemplateName
	Enabled bool
	If      Precondition
}

// DeleteRequest removes a template.
type DeleteRequest struct {
	Scope Scope
	Name  TemplateName
	If    Precondition
}

// ImportRequest imports a manifest stream.
type ImportRequest struct {
	Scope Scope
	YAML  []byte
}

// TemplateResponse is one template, answered with its ETag (and, after a create, its
// Location and 201).
type TemplateResponse struct {
	Template
	// Status overrides 200; Location asks for a Location header.
	Status   int  `json:"-"`
	Location bool `json:"-"`
}

// StatusCode implements kithttp.StatusCoder.
func (r TemplateResponse) StatusCode() int {
	if r.Status != 0 {
		return r.Status
	}
	return http.StatusOK
}

// Headers implements kithttp.Headerer.
func (r TemplateResponse) Headers() http.Header {
	h := http.Header{"Etag": {ETag(r.Template)}}
	if r.Location {
		base := "/api/v1/templates/"
		if r.Scope == ScopePlatform {
			base = "/api/v1/platform/templates/"
		}
		h.Set("Location", base+string(r.Name))
	}
	return h
}

// NoContent is an empty 204 answer.
type NoContent struct{}

// StatusCode implements kithttp.StatusCoder.
func (NoContent) StatusCode() int { return http.StatusNoContent }
