package apperr

import (
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"time"
)

// ProblemContentType is the media type of RFC 9457 problem details.
const ProblemContentType = "application/problem+json"

// typeBase prefixes every problem "type" URI; the code completes it.
const typeBase = "https://streamspace.dev/problems/"

// statusOf is the one table from codes to HTTP statuses; codeOf is its inverse.
var statusOf = map[Code]int{
	Invalid:            http.StatusBadRequest,
	Unauthenticated:    http.StatusUnauthorized,
	Forbidden:          http.StatusForbidden,
	NotFound:           http.StatusNotFound,
	Conflict:           http.StatusConflict,
	PreconditionFailed: http.StatusPreconditionFailed,
	QuotaExceeded:      http.StatusUnprocessableEntity,
	RateLimited:        http.StatusTooManyRequests,
	Unavailable:        http.StatusServiceUnavailable,
	Internal:           http.StatusInternalServerError,
}

var codeOf = func() map[int]Code {
	m := make(map[int]Code, len(statusOf))
	for c, s := range statusOf {
		m[s] = c
	}
	return m
}()

// Status returns the HTTP status for a code; 500 for an unknown one.
func Status(c Code) int {
	if s, ok := statusOf[c]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// CodeForStatus returns the code for an HTTP status, for clients reading a response that
// carries no problem body. Unknown 4xx map to Invalid, unknown 5xx to Internal.
func CodeForStatus(status int) Code {
	if c, ok := codeOf[status]; ok {
		return c
	}
	if status >= 400 && status < 500 {
		return Invalid
	}
	return Internal
}

// Problem is the RFC 9457 body, with StreamSpace's extension members.
type Problem struct {
	Type     string       `json:"type"`
	Title    string       `json:"title"`
	Status   int          `json:"status"`
	Detail   string       `json:"detail,omitempty"`
	Instance string       `json:"instance,omitempty"`
	Code     Code         `json:"code"`
	Errors   []FieldError `json:"errors,omitempty"`
	// RetryAfterSeconds mirrors the Retry-After header for clients that only read bodies.
	RetryAfterSeconds int `json:"retry_after_seconds,omitempty"`
}

// ProblemOf converts any error into the problem a client may see. Errors without a code
// become a generic internal problem: their text may hold SQL, paths or secrets.
func ProblemOf(err error) Problem {
	e, ok := As(err)
	if !ok || !e.Code.Valid() {
		e = &Error{Code: Internal, Message: "internal error"}
	}
	p := Problem{
		Type:   typeBase + string(e.Code),
		Title:  http.StatusText(Status(e.Code)),
		Status: Status(e.Code),
		Detail: e.Message,
		Code:   e.Code,
		Errors: e.Fields,
	}
	if e.RetryAfter > 0 {
		p.RetryAfterSeconds = int((e.RetryAfter + time.Second - 1) / time.Second)
	}
	return p
}

// WriteHTTP writes err as application/problem+json. instance, when not empty, names the
// request (its path).
func WriteHTTP(w http.ResponseWriter, instance string, err error) {
	p := ProblemOf(err)
	p.Instance = instance
	h := w.Header()
	h.Set("Content-Type", ProblemContentType)
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	if p.RetryAfterSeconds > 0 {
		h.Set("Retry-After", strconv.Itoa(p.RetryAfterSeconds))
	}
	if p.Code == Unauthenticated && h.Get("WWW-Authenticate") == "" {
		h.Set("WWW-Authenticate", `Bearer realm="streamspace"`)
	}
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

// maxProblemBody caps what FromResponse reads, so a hostile server cannot exhaust memory.
const maxProblemBody = 64 << 10

// FromResponse turns a non-2xx HTTP response into an *Error, keeping the code, message,
// field errors and retry advice of a problem+json body. It never compares strings: the code
// travels as a member. It does not close the body.
func FromResponse(resp *http.Response) *Error {
	e := &Error{Code: CodeForStatus(resp.StatusCode), Message: http.StatusText(resp.StatusCode)}
	if s := resp.Header.Get("Retry-After"); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n > 0 {
			e.RetryAfter = time.Duration(n) * time.Second
		}
	}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if mt != ProblemContentType {
		return e
	}
	var p Problem
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxProblemBody)).Decode(&p); err != nil {
		e.Cause = fmt.Errorf("decoding problem body: %w", err)
		return e
	}
	if p.Code.Valid() {
		e.Code = p.Code
	}
	if p.Detail != "" {
		e.Message = p.Detail
	}
	e.Fields = p.Errors
	if p.RetryAfterSeconds > 0 {
		e.RetryAfter = time.Duration(p.RetryAfterSeconds) * time.Second
	}
	return e
}
