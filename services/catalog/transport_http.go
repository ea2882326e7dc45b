package catalog

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"

	kithttp "github.com/go-kit/kit/transport/http"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/kitx"
)

// MaxJSONBody bounds a create or update body; a template is a few KiB at most.
const MaxJSONBody = 256 << 10

// MaxImportBody bounds an import body: the manifest parser's stream limit (1 MiB).
const MaxImportBody = 1 << 20

// OpenAPIPath serves the catalog's OpenAPI document.
const OpenAPIPath = "/api/v1/catalog/openapi.json"

//go:embed openapi.json
var openAPI []byte

// OpenAPI returns the embedded OpenAPI 3.1 document.
func OpenAPI() []byte { return openAPI }

// Route is one served route (see kitx.Route).
type Route = kitx.Route

// MakeRoutes returns the catalog's routes. Every route but the OpenAPI document expects
// the caller's principal in the context (auth.Middleware); the module wraps them.
func MakeRoutes(e Endpoints, logger *slog.Logger) []Route {
	opts := kitx.ServerOptions(logger)
	routes := []Route{{Method: http.MethodGet, Pattern: OpenAPIPath, Public: true, Handler: http.HandlerFunc(serveOpenAPI)}}
	for _, sc := range []struct {
		scope Scope
		base  string
	}{{ScopeTenant, "/api/v1/templates"}, {ScopePlatform, "/api/v1/platform/templates"}} {
		scope, base := sc.scope, sc.base
		add := func(method, path string, ep func(context.Context, any) (any, error), dec kithttp.DecodeRequestFunc, status int) {
			routes = append(routes, Route{Method: method, Pattern: base + path,
				Handler: kithttp.NewServer(ep, dec, kitx.EncodeJSON(status), opts...)})
		}
		add(http.MethodGet, "", e.List, decodeList(scope), http.StatusOK)
		add(http.MethodPost, "", e.Create, decodeCreate(scope), http.StatusCreated)
		add(http.MethodPost, ":import", e.Import, decodeImport(scope), http.StatusOK)
		add(http.MethodGet, "/{name}", e.Get, decodeName(scope, func(n TemplateName, _ *http.Request) (any, error) {
			return GetRequest{Scope: scope, Name: n}, nil
		}), http.StatusOK)
		add(http.MethodPut, "/{name}", e.Update, decodeUpdate(scope), http.StatusOK)
		add(http.MethodDelete, "/{name}", e.Delete, decodeName(scope, func(n TemplateName, r *http.Request) (any, error) {
			pre, _, err := ParseIfMatch(r.Header.Get("If-Match"), scope)
			return DeleteRequest{Scope: scope, Name: n, If: pre}, err
		}), http.StatusNoContent)
		for _, enabled := range []bool{true, false} {
			path := "/{name}/disable"
			if enabled {
				path = "/{name}/enable"
			}
			add(http.MethodPost, path, e.SetEnabled, decodeName(scope, func(n TemplateName, r *http.Request) (any, error) {
				pre, _, err := ParseIfMatch(r.Header.Get("If-Match"), scope)
				return SetEnabledRequest{Scope: scope, Name: n, Enabled: enabled, If: pre}, err
			}), http.StatusOK)
		}
	}
	return routes
}

func serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(openAPI)
}

func decodeList(scope Scope) kithttp.DecodeRequestFunc {
	return func(_ context.Context, r *http.Request) (any, error) {
		v := r.URL.Query()
		q := Query{Category: v.Get("category"), Tag: v.Get("tag"), Text: v.Get("q"), Cursor: v.Get("cursor")}
		if s := v.Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil {
				return nil, apperr.Validation("invalid page size", apperr.Field("limit", "must be an integer"))
			}
			q.Limit = n
			if n == 0 {
				q.Limit = -1 // an explicit 0 is a mistake, not "the default"
			}
		}
		if s := v.Get("include_disabled"); s != "" {
			b, err := strconv.ParseBool(s)
			if err != nil {
				return nil, apperr.Validation("invalid filter", apperr.Field("include_disabled", "must be true or false"))
			}
			q.IncludeDisabled = b
		}
		return ListRequest{Scope: scope, Query: q}, nil
	}
}

func decodeCreate(scope Scope) kithttp.DecodeRequestFunc {
	body := kitx.DecodeJSON[NewTemplate](MaxJSONBody)
	return func(ctx context.Context, r *http.Request) (any, error) {
		v, err := body(ctx, r)
		if err != nil {
			return nil, err
		}
		return CreateRequest{Scope: scope, Template: v.(NewTemplate)}, nil
	}
}

// updateBody is a PUT body: the whole spec, and optionally the version it replaces and
// the enabled flag.
type updateBody struct {
	Spec
	Version int64 `json:"version,omitempty"`
	Enabled *bool `json:"enabled,omitempty"`
}

func decodeUpdate(scope Scope) kithttp.DecodeRequestFunc {
	body := kitx.DecodeJSON[updateBody](MaxJSONBody)
	return decodeName(scope, func(n TemplateName, r *http.Request) (any, error) {
		pre, present, err := ParseIfMatch(r.Header.Get("If-Match"), scope)
		if err != nil {
			return nil, err
		}
		v, err := body(r.Context(), r)
		if err != nil {
			return nil, err
		}
		b := v.(updateBody)
		switch {
		case present && b.Version != 0 && pre.Version != 0 && b.Version != pre.Version:
			return nil, apperr.Validation("If-Match and version disagree", apperr.Field("version", "must match the If-Match header"))
		case !present || pre.Version == 0:
			// "*" only asks for existence; the body's version, if any, still guards.
			if b.Version != 0 {
				pre = Precondition{Version: b.Version}
			}
		}
		return UpdateRequest{Scope: scope, Name: n, Update: Update{Spec: b.Spec, Enabled: b.Enabled, If: pre}}, nil
	})
}

func decodeName(_ Scope, next func(TemplateName, *http.Request) (any, error)) kithttp.DecodeRequestFunc {
	return func(_ context.Context, r *http.Request) (any, error) {
		return next(TemplateName(r.PathValue("name")), r)
	}
}

// importTypes are the media types an import body may carry.
var importTypes = map[string]bool{
	"application/yaml": true, "application/x-yaml": true, "text/yaml": true, "text/x-yaml": true, "text/plain": true,
}

func decodeImport(scope Scope) kithttp.DecodeRequestFunc {
	return func(_ context.Context, r *http.Request) (any, error) {
		mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if err != nil || !importTypes[mt] {
			return nil, apperr.New(apperr.Invalid, "Content-Type must be application/yaml")
		}
		b, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, MaxImportBody))
		var tooLarge *http.MaxBytesError
		switch {
		case errors.As(err, &tooLarge):
			return nil, apperr.Wrap(err, apperr.Invalid, "request body exceeds the limit of %d bytes", MaxImportBody)
		case err != nil:
			return nil, fmt.Errorf("reading import body: %w", err)
		}
		return ImportRequest{Scope: scope, YAML: b}, nil
	}
}
