package identity

import (
	_ "embed"
	"net/http"
)

// openAPI is identity's OpenAPI 3.1 document, kept beside the routes it describes; a test
// checks that the two list the same operations.
//
//go:embed openapi.json
var openAPI []byte

// OpenAPI returns the OpenAPI document.
func OpenAPI() []byte { return openAPI }

func serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(openAPI)
}
