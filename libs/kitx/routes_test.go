package kitx

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
)

func TestMountProtectsAllButPublicRoutes(t *testing.T) {
	t.Parallel()
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	deny := func(http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusUnauthorized) })
	}
	routes := []Route{
		{Method: http.MethodGet, Pattern: "/api/v1/x/openapi.json", Public: true, Handler: ok},
		{Method: http.MethodGet, Pattern: "/api/v1/x/{id}", Handler: ok},
	}
	mux := http.NewServeMux()
	Mount(mux, routes, deny)
	for path, want := range map[string]int{"/api/v1/x/openapi.json": 200, "/api/v1/x/7": 401} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != want {
			t.Errorf("GET %s = %d, want %d", path, rec.Code, want)
		}
	}
	if got := Patterns(routes); !slices.Equal(got, []string{"GET /api/v1/x/openapi.json", "GET /api/v1/x/{id}"}) {
		t.Fatalf("Patterns = %v", got)
	}
}
