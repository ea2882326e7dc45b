package kitx

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	kithttp "github.com/go-kit/kit/transport/http"

	"streamspace.dev/libs/apperr"
)

type createReq struct {
	Name  string `json:"name"`
	Ports []struct {
		Port int `json:"port"`
	} `json:"ports"`
}

type createResp struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

type created struct{ createResp }

func (created) StatusCode() int { return http.StatusCreated }
func (created) Headers() http.Header {
	return http.Header{"Location": {"/v1/things/1"}}
}

// lockedBuffer lets the server goroutine log while the test reads.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	dec := json.NewDecoder(&b.buf)
	for dec.More() {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

const maxBody = 64

var errDatabaseDown = errors.New("dial tcp 10.0.0.7:5432: connection refused")

// newServer serves POST /things through the helpers under test. The request's name picks
// the endpoint's behaviour.
func newServer(t *testing.T) (*httptest.Server, *lockedBuffer) {
	t.Helper()
	logs := new(lockedBuffer)
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	svc := func(_ context.Context, req createReq) (any, error) {
		switch req.Name {
		case "missing":
			return nil, apperr.New(apperr.NotFound, "template %q not found", req.Name)
		case "crash":
			return nil, errDatabaseDown
		case "new":
			return created{createResp{ID: "1", Name: req.Name}}, nil
		case "unencodable":
			return func() {}, nil
		}
		return createResp{ID: "1", Name: req.Name}, nil
	}
	mux := http.NewServeMux()
	mux.Handle("POST /things", kithttp.NewServer(
		Endpoint(svc), DecodeJSON[createReq](maxBody), EncodeJSON(http.StatusOK),
		ServerOptions(logger)...))
	// A wiring mistake: the decoder's type does not match the endpoint's.
	mux.Handle("POST /miswired", kithttp.NewServer(
		Endpoint(svc), DecodeJSON[map[string]any](maxBody), EncodeJSON(http.StatusOK),
		ServerOptions(logger)...))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, logs
}

func post(t *testing.T, url, contentType, body string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Post(url, contentType, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(b))
	return resp, b
}

func TestDecodeFailuresAreInvalidProblems(t *testing.T) {
	t.Parallel()
	srv, _ := newServer(t)
	cases := []struct {
		name, contentType, body string
		detail                  string // a part of the problem's detail
		field                   string // the field error's field, if any
	}{
		{"wrong content type", "text/plain", `{"name":"a"}`, "Content-Type must be application/json", ""},
		{"no content type", "", `{"name":"a"}`, "Content-Type must be application/json", ""},
		{"malformed", "application/json", `{"name":}`, "malformed JSON at byte", ""},
		{"truncated", "application/json", `{"name":"a"`, "truncated", ""},
		{"empty", "application/json", ``, "empty", ""},
		{"unknown field", "application/json", `{"name":"a","admin":true}`, `"admin"`, ""},
		{"trailing data", "application/json", `{"name":"a"} {"name":"b"}`, "single JSON value", ""},
		{"trailing garbage", "application/json", `{"name":"a"}]`, "single JSON value", ""},
		{"oversized", "application/json", `{"name":"` + strings.Repeat("x", maxBody) + `"}`, "exceeds the limit of 64 bytes", ""},
		{"oversized trailing", "application/json", `{"name":"a"}` + strings.Repeat(" ", maxBody), "exceeds the limit of 64 bytes", ""},
		{"wrong field type", "application/json", `{"ports":[{"port":"80"}]}`, "wrong type", "ports/port"},
		{"wrong top-level type", "application/json", `["a"]`, "must be an object", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			resp, raw := post(t, srv.URL+"/things", tc.contentType, tc.body)
			if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Content-Type") != apperr.ProblemContentType {
				t.Fatalf("%d %s: %s", resp.StatusCode, resp.Header.Get("Content-Type"), raw)
			}
			var p apperr.Problem
			if err := json.Unmarshal(raw, &p); err != nil {
				t.Fatal(err)
			}
			if p.Code != apperr.Invalid || p.Instance != "/things" || !strings.Contains(p.Detail, tc.detail) {
				t.Fatalf("problem %+v, want code invalid, instance /things, detail with %q", p, tc.detail)
			}
			if tc.field != "" && (len(p.Errors) != 1 || p.Errors[0].Field != tc.field) {
				t.Fatalf("field errors %+v, want one for %q", p.Errors, tc.field)
			}
			// Go's type names are not the client's concern.
			if strings.Contains(p.Detail, "kitx.") || strings.Contains(p.Detail, "Go value") {
				t.Fatalf("detail leaks Go types: %q", p.Detail)
			}
		})
	}
}

func TestSuccessfulResponses(t *testing.T) {
	t.Parallel()
	srv, _ := newServer(t)

	resp, raw := post(t, srv.URL+"/things", "application/json; charset=utf-8", ` {"name":"gimp"} `+"\n")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json; charset=utf-8" {
		t.Fatalf("%d %s: %s", resp.StatusCode, resp.Header.Get("Content-Type"), raw)
	}
	var got createResp
	if err := json.Unmarshal(raw, &got); err != nil || got != (createResp{ID: "1", Name: "gimp"}) {
		t.Fatalf("body %s (%v)", raw, err)
	}

	resp, raw = post(t, srv.URL+"/things", "application/json", `{"name":"new"}`)
	if resp.StatusCode != http.StatusCreated || resp.Header.Get("Location") != "/v1/things/1" {
		t.Fatalf("StatusCoder/Headerer ignored: %d %v %s", resp.StatusCode, resp.Header, raw)
	}
}

func TestEndpointErrorsAreProblemsAndLoggedByClass(t *testing.T) {
	t.Parallel()
	srv, logs := newServer(t)

	resp, _ := post(t, srv.URL+"/things", "application/json", `{"name":"missing"}`)
	if e := apperr.FromResponse(resp); e.Code != apperr.NotFound || e.Message != `template "missing" not found` {
		t.Fatalf("coded error: %d %+v", resp.StatusCode, e)
	}

	resp, raw := post(t, srv.URL+"/things", "application/json", `{"name":"crash"}`)
	if e := apperr.FromResponse(resp); resp.StatusCode != http.StatusInternalServerError || e.Code != apperr.Internal {
		t.Fatalf("uncoded error: %d %+v", resp.StatusCode, e)
	}
	if bytes.Contains(raw, []byte("10.0.0.7")) {
		t.Fatalf("internal error text reached the client: %s", raw)
	}

	resp, _ = post(t, srv.URL+"/things", "application/json", `{"name":"unencodable"}`)
	if resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("encode failure: %d", resp.StatusCode)
	}

	resp, _ = post(t, srv.URL+"/miswired", "application/json", `{}`)
	if resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("miswired endpoint: %d", resp.StatusCode)
	}

	levels := map[string]string{} // code -> level
	var internal []string
	for _, r := range logs.records(t) {
		code, _ := r["code"].(string)
		if r["level"] == "ERROR" {
			internal = append(internal, r["err"].(string))
		}
		if prev, ok := levels[code]; ok && prev != r["level"] {
			t.Errorf("code %s logged at %v and %v", code, prev, r["level"])
		}
		levels[code] = r["level"].(string)
	}
	if levels[string(apperr.NotFound)] != "DEBUG" {
		t.Errorf("not_found logged at %q, want DEBUG", levels[string(apperr.NotFound)])
	}
	if len(internal) != 3 || !strings.Contains(internal[0], "10.0.0.7") {
		t.Errorf("internal errors logged at error level: %q", internal)
	}
}

func TestEndpointAdapterPassesTypedValues(t *testing.T) {
	t.Parallel()
	ep := Endpoint(func(_ context.Context, n int) (string, error) {
		if n < 0 {
			return "", apperr.New(apperr.Invalid, "negative")
		}
		return strings.Repeat("x", n), nil
	})
	got, err := ep(context.Background(), 3)
	if err != nil || got.(string) != "xxx" {
		t.Fatalf("got %v, %v", got, err)
	}
	if _, err := ep(context.Background(), -1); !apperr.IsCode(err, apperr.Invalid) {
		t.Fatalf("service error lost: %v", err)
	}
	if _, err := ep(context.Background(), "3"); apperr.CodeOf(err) != apperr.Internal {
		t.Fatalf("wrong request type: %v", err)
	}
}

// FuzzDecodeJSON: whatever the body, the decoder returns a createReq or an Invalid error,
// and never panics.
func FuzzDecodeJSON(f *testing.F) {
	for _, s := range []string{`{"name":"a"}`, `{"ports":[{"port":1}]}`, `{`, `[]`, `null`, `{"x":1}`, `{} {}`} {
		f.Add(s)
	}
	decode := DecodeJSON[createReq](maxBody)
	f.Fuzz(func(t *testing.T, body string) {
		r := httptest.NewRequest(http.MethodPost, "/things", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		v, err := decode(context.Background(), r)
		if err != nil {
			if !apperr.IsCode(err, apperr.Invalid) {
				t.Fatalf("body %q: error %v is not invalid", body, err)
			}
			return
		}
		if _, ok := v.(createReq); !ok {
			t.Fatalf("body %q decoded to %T", body, v)
		}
	})
}
