package streamspace_test

import (
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"streamspace.dev/services/identity"
)

// TestCatalogFlowThroughAllInOne is issue 4's definition of done, driven through the
// all-in-one binary's real HTTP API with a token identity really issued: a tenant admin
// imports a folder of StreamSpace v1 manifests, then browses, edits and disables the
// templates.
func TestCatalogFlowThroughAllInOne(t *testing.T) {
	call := startPlane(t).call

	// A tenant signs up; its owner is (at least) an admin.
	var signup identity.SignupResult
	call("POST", "/api/v1/signup", "", identity.Signup{TenantName: "Hooli", Slug: "hooli", Email: "gavin@hooli.test",
		Password: "a long enough passphrase"}, nil, &signup, 201)
	token := signup.Tokens.AccessToken

	// Import a folder of v1 manifests: every file of it, as one multi-document stream.
	type report struct {
		Results []struct {
			Name    string
			Outcome string
			Reason  string
		}
		Created, Updated, Unchanged, Rejected int
	}
	files, err := filepath.Glob("../catalog/manifest/testdata/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("manifests: %v", err)
	}
	var stream []byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		stream = append(append(stream, "\n---\n"...), b...)
	}
	var rep report
	call("POST", "/api/v1/templates:import", token, stream, nil, &rep, 200)
	if rep.Created != 7 || rep.Rejected != 9 {
		t.Fatalf("import: %+v", rep)
	}
	call("POST", "/api/v1/templates:import", token, stream, nil, &rep, 200)
	if rep.Unchanged != 7 || rep.Created != 0 || rep.Updated != 0 {
		t.Fatalf("re-import is not idempotent: %+v", rep)
	}

	// Browse: the merged view holds the imports and the built-in platform catalog.
	type page struct {
		Items []struct {
			Name        string `json:"name"`
			Scope       string `json:"scope"`
			DisplayName string `json:"display_name"`
			Enabled     bool   `json:"enabled"`
		} `json:"items"`
		NextCursor string `json:"next_cursor"`
	}
	var p page
	call("GET", "/api/v1/templates?category=Development", token, nil, nil, &p, 200)
	if len(p.Items) != 1 || p.Items[0].Name != "code-server" || p.Items[0].Scope != "tenant" {
		t.Fatalf("Development: %+v (the import must shadow the built-in code-server)", p.Items)
	}
	call("GET", "/api/v1/templates?q=firefox&limit=10", token, nil, nil, &p, 200)
	var names []string
	for _, it := range p.Items {
		names = append(names, it.Scope+":"+it.Name)
	}
	if !slices.Contains(names, "tenant:firefox-browser") || !slices.Contains(names, "platform:firefox") {
		t.Fatalf("search firefox: %v", names)
	}

	// Edit: read, change, write back under the ETag; a second write with the old one fails.
	var tpl map[string]any
	h := call("GET", "/api/v1/templates/firefox-browser", token, nil, nil, &tpl, 200)
	etag := h.Get("ETag")
	for _, k := range []string{"name", "scope", "version", "enabled", "created_at", "updated_at"} {
		delete(tpl, k)
	}
	tpl["display_name"] = "Firefox (Hooli)"
	tpl["idle_timeout_seconds"] = 900
	h = call("PUT", "/api/v1/templates/firefox-browser", token, tpl, http.Header{"If-Match": {etag}}, nil, 200)
	if h.Get("ETag") == etag {
		t.Fatal("the ETag did not change")
	}
	call("PUT", "/api/v1/templates/firefox-browser", token, tpl, http.Header{"If-Match": {etag}}, nil, 412)

	// Disable: gone from the default list, still there for an admin who asks.
	call("POST", "/api/v1/templates/firefox-browser/disable", token, nil, http.Header{"If-Match": {h.Get("ETag")}}, nil, 200)
	call("GET", "/api/v1/templates?q=firefox", token, nil, nil, &p, 200)
	for _, it := range p.Items {
		if it.Name == "firefox-browser" {
			t.Fatalf("disabled template listed: %+v", p.Items)
		}
	}
	call("GET", "/api/v1/templates?q=firefox&include_disabled=true", token, nil, nil, &p, 200)
	found := false
	for _, it := range p.Items {
		found = found || (it.Name == "firefox-browser" && !it.Enabled && it.DisplayName == "Firefox (Hooli)")
	}
	if !found {
		t.Fatalf("disabled template missing for the admin: %+v", p.Items)
	}
}
