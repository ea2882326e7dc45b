package apperr

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestEveryCodeHasOneDistinctStatus(t *testing.T) {
	t.Parallel()
	seen := map[int]Code{}
	for _, c := range Codes {
		s := Status(c)
		if prev, dup := seen[s]; dup {
			t.Fatalf("codes %s and %s share status %d", prev, c, s)
		}
		seen[s] = c
		if got := CodeForStatus(s); got != c {
			t.Errorf("CodeForStatus(%d) = %s, want %s", s, got, c)
		}
	}
	if len(seen) != len(statusOf) {
		t.Fatalf("Codes lists %d codes, the table has %d", len(seen), len(statusOf))
	}
}

func TestRoundTripThroughHTTP(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		err  error
		want *Error
	}{
		{"validation keeps fields", Validation("bad template", Field("ports/0/port", "must be 1-65535")),
			&Error{Code: Invalid, Message: "bad template", Fields: []FieldError{{"ports/0/port", "must be 1-65535"}}}},
		{"wrapped code survives", fmt.Errorf("loading: %w", New(NotFound, "template %q not found", "gimp")),
			&Error{Code: NotFound, Message: `template "gimp" not found`}},
		{"retry advice", &Error{Code: RateLimited, Message: "slow down", RetryAfter: 1500 * time.Millisecond},
			&Error{Code: RateLimited, Message: "slow down", RetryAfter: 2 * time.Second}},
		{"uncoded error hides its text", errors.New("pq: password=hunter2 relation t_x.users"),
			&Error{Code: Internal, Message: "internal error"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rec := httptest.NewRecorder()
			WriteHTTP(rec, "/api/v1/x", tc.err)
			resp := rec.Result()
			if ct := resp.Header.Get("Content-Type"); ct != ProblemContentType {
				t.Fatalf("content type %q", ct)
			}
			if resp.StatusCode != Status(tc.want.Code) {
				t.Fatalf("status %d, want %d", resp.StatusCode, Status(tc.want.Code))
			}
			got := FromResponse(resp)
			if got.Code != tc.want.Code || got.Message != tc.want.Message || got.RetryAfter != tc.want.RetryAfter {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			if fmt.Sprint(got.Fields) != fmt.Sprint(tc.want.Fields) {
				t.Fatalf("fields %v, want %v", got.Fields, tc.want.Fields)
			}
		})
	}
}

func TestIsMatchesByCode(t *testing.T) {
	t.Parallel()
	err := fmt.Errorf("outer: %w", Wrap(errors.New("io"), Conflict, "version moved"))
	if !errors.Is(err, &Error{Code: Conflict}) {
		t.Fatal("errors.Is by code failed")
	}
	if errors.Is(err, &Error{Code: NotFound}) {
		t.Fatal("matched the wrong code")
	}
	if CodeOf(nil) != "" || CodeOf(errors.New("x")) != Internal || !IsCode(err, Conflict) {
		t.Fatal("CodeOf")
	}
}

func TestFromResponseWithoutProblemBody(t *testing.T) {
	t.Parallel()
	rec := httptest.NewRecorder()
	rec.Header().Set("Content-Type", "text/html")
	rec.WriteHeader(http.StatusBadGateway)
	_, _ = rec.WriteString("<html>proxy error</html>")
	if got := FromResponse(rec.Result()); got.Code != Internal {
		t.Fatalf("code %s", got.Code)
	}
}
