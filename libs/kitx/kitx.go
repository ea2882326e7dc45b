// Package kitx holds typed helpers for go-kit's HTTP transport, so that services decode,
// encode and report errors the same way: strict JSON in, JSON out, and every error as
// RFC 9457 problem+json through apperr.
package kitx

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"reflect"
	"strings"

	"github.com/go-kit/kit/endpoint"
	"github.com/go-kit/kit/transport"
	kithttp "github.com/go-kit/kit/transport/http"

	"streamspace.dev/libs/apperr"
)

// instanceKey holds the request path in the context, because go-kit's ErrorEncoder gets
// no *http.Request but the problem's "instance" must name the request.
type instanceKey struct{}

// ServerOptions returns the options every StreamSpace go-kit HTTP server uses:
//
//   - errors are written by apperr.WriteHTTP as problem+json, with the request path as the
//     problem instance;
//   - internal errors (no code, or code internal) are logged at error level with their
//     full text, which the client never sees; coded errors are the caller's business and
//     are logged at debug level.
//
// Log with a telemetry logger so the lines carry the request's trace id.
func ServerOptions(logger *slog.Logger) []kithttp.ServerOption {
	return []kithttp.ServerOption{
		kithttp.ServerBefore(func(ctx context.Context, r *http.Request) context.Context {
			return context.WithValue(ctx, instanceKey{}, r.URL.Path)
		}),
		kithttp.ServerErrorEncoder(EncodeError),
		kithttp.ServerErrorHandler(transport.ErrorHandlerFunc(func(ctx context.Context, err error) {
			level := slog.LevelDebug
			if apperr.CodeOf(err) == apperr.Internal {
				level = slog.LevelError
			}
			path, _ := ctx.Value(instanceKey{}).(string)
			logger.Log(ctx, level, "request failed", "path", path, "code", apperr.CodeOf(err), "err", err)
		})),
	}
}

// EncodeError is the kithttp.ErrorEncoder of ServerOptions: apperr.WriteHTTP with the
// request path (when ServerOptions' before-func stored it) as instance.
func EncodeError(ctx context.Context, err error, w http.ResponseWriter) {
	path, _ := ctx.Value(instanceKey{}).(string)
	apperr.WriteHTTP(w, path, err)
}

// DecodeJSON returns a strict decoder of a JSON request body into a T. It requires
// Content-Type application/json, reads at most maxBytes, rejects unknown fields and
// anything after the single JSON value, and reports every failure as apperr.Invalid with
// a message the client can act on. T is returned by value, so pair it with Endpoint[T, ...].
func DecodeJSON[T any](maxBytes int64) kithttp.DecodeRequestFunc {
	return func(_ context.Context, r *http.Request) (any, error) {
		var v T
		mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if err != nil || mt != "application/json" {
			return nil, apperr.New(apperr.Invalid, "Content-Type must be application/json")
		}
		// MaxBytesReader rather than LimitReader: an oversized body is an error, not a
		// silently truncated document.
		dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, maxBytes))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&v); err != nil {
			return nil, decodeError(err, maxBytes)
		}
		// A second value, or garbage, after the first is a client bug worth reporting;
		// io.EOF means only whitespace followed.
		if _, err := dec.Token(); !errors.Is(err, io.EOF) {
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				return nil, decodeError(err, maxBytes)
			}
			return nil, apperr.New(apperr.Invalid, "request body must hold a single JSON value")
		}
		return v, nil
	}
}

// decodeError maps a json.Decoder error to an Invalid error, keeping the cause for logs.
func decodeError(err error, maxBytes int64) error {
	var (
		tooLarge *http.MaxBytesError
		syntax   *json.SyntaxError
		typ      *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &tooLarge):
		return apperr.Wrap(err, apperr.Invalid, "request body exceeds the limit of %d bytes", maxBytes)
	case errors.Is(err, io.EOF):
		return apperr.Wrap(err, apperr.Invalid, "request body is empty; want a JSON value")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return apperr.Wrap(err, apperr.Invalid, "request body is truncated JSON")
	case errors.As(err, &syntax):
		return apperr.Wrap(err, apperr.Invalid, "request body is malformed JSON at byte %d", syntax.Offset)
	case errors.As(err, &typ) && typ.Field == "":
		return apperr.Wrap(err, apperr.Invalid, "request body must be %s, not a JSON %s", jsonKind(typ.Type), typ.Value)
	case errors.As(err, &typ):
		e := apperr.Validation("request body has a field of the wrong type",
			apperr.Field(strings.ReplaceAll(typ.Field, ".", "/"),
				fmt.Sprintf("must be %s, not a JSON %s", jsonKind(typ.Type), typ.Value)))
		e.Cause = err
		return e
	default:
		// Unknown fields and other mismatches have no error type in encoding/json; its
		// text names the problem in terms of the client's own document, so it is safe
		// and useful to show.
		return apperr.Wrap(err, apperr.Invalid, "request body does not fit: %v", err)
	}
}

// jsonKind names what JSON value fits t, in the client's terms rather than Go's.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Struct, reflect.Map:
		return "an object"
	}
	return "a different JSON value"
}

// EncodeJSON returns an encoder that writes the response as JSON with status, or with
// the response's own StatusCode() when it implements kithttp.StatusCoder; headers from
// kithttp.Headerer are copied too. A nil response, or status 204, writes no body. The
// response is marshalled before anything is written, so a marshalling failure still
// becomes a clean 500 problem.
func EncodeJSON(status int) kithttp.EncodeResponseFunc {
	return func(_ context.Context, w http.ResponseWriter, response any) error {
		code := status
		if sc, ok := response.(kithttp.StatusCoder); ok {
			code = sc.StatusCode()
		}
		if h, ok := response.(kithttp.Headerer); ok {
			for k, vs := range h.Headers() {
				for _, v := range vs {
					w.Header().Add(k, v)
				}
			}
		}
		if response == nil || code == http.StatusNoContent {
			w.WriteHeader(code)
			return nil
		}
		body, err := json.Marshal(response)
		if err != nil {
			return fmt.Errorf("kitx: encoding %T response: %w", response, err)
		}
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(code)
		// A write error means the client went away after the status was sent: returning it
		// would only make go-kit write a second, superfluous status.
		_, _ = w.Write(append(body, '\n'))
		return nil
	}
}

// Endpoint adapts a typed function to a go-kit endpoint, so services never cast
// interface{} values themselves. A request of another type is a wiring bug: it returns
// an uncoded (internal) error that is logged and shown to the client only as
// "internal error".
func Endpoint[Req, Resp any](f func(ctx context.Context, req Req) (Resp, error)) endpoint.Endpoint {
	return func(ctx context.Context, request any) (any, error) {
		req, ok := request.(Req)
		if !ok {
			return nil, fmt.Errorf("kitx: endpoint got request %T, want %v", request, reflect.TypeFor[Req]())
		}
		resp, err := f(ctx, req)
		if err != nil {
			return nil, err
		}
		return resp, nil
	}
}
