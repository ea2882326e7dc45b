package scheduler

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
)

// TestOpenAPIDocumentsExactlyTheServedRoutes holds the document and the routes together:
// a route added without its documentation, or documentation left behind by a removed
// route, fails here. It serves the document through its own route, as clients fetch it.
func TestOpenAPIDocumentsExactlyTheServedRoutes(t *testing.T) {
	t.Parallel()
	routes := MakeRoutes(MakeEndpoints(NewService(nil)), slog.New(slog.DiscardHandler))
	mux := http.NewServeMux()
	var served []string
	for _, r := range routes {
		mux.Handle(r.Method+" "+r.Pattern, r.Handler)
		served = append(served, r.Method+" "+r.Pattern)
	}
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, OpenAPIPath, nil))
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("GET %s: %d %s", OpenAPIPath, rec.Code, rec.Header().Get("Content-Type"))
	}
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	var documented []string
	for path, ops := range doc.Paths {
		for method := range ops {
			documented = append(documented, strings.ToUpper(method)+" "+path)
		}
	}
	slices.Sort(documented)
	slices.Sort(served)
	if doc.OpenAPI != "3.1.0" || !slices.Equal(documented, served) {
		t.Fatalf("documented %v\nserved     %v", documented, served)
	}
	// Only the document itself is public: everything else needs a token.
	for _, r := range routes {
		if r.Public != (r.Pattern == OpenAPIPath) {
			t.Errorf("%s %s: public %v", r.Method, r.Pattern, r.Public)
		}
	}
}
