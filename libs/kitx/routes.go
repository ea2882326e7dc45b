package kitx

import "net/http"

// Route is one served route: a method, a net/http pattern, its handler, and whether it is
// served without authentication (an OpenAPI document, a sign-in).
type Route struct {
	Method  string
	Pattern string
	Public  bool
	Handler http.Handler
}

// Mount registers routes on mux as "METHOD /pattern", wrapping every route that is not
// Public with authenticate, so a route is protected unless it says otherwise.
func Mount(mux *http.ServeMux, routes []Route, authenticate func(http.Handler) http.Handler) {
	for _, r := range routes {
		h := r.Handler
		if !r.Public {
			h = authenticate(h)
		}
		mux.Handle(r.Method+" "+r.Pattern, h)
	}
}

// Patterns returns the "METHOD /pattern" of each route, for the tests that hold the served
// routes and the OpenAPI document together.
func Patterns(routes []Route) []string {
	out := make([]string, len(routes))
	for i, r := range routes {
		out[i] = r.Method + " " + r.Pattern
	}
	return out
}
