// Package apperr is StreamSpace's one error model.
//
// Business code returns *Error values (or wraps them with fmt.Errorf("...: %w", err)); the
// transport maps them to HTTP exactly once, in problem.go, as RFC 9457
// application/problem+json. Any error that carries no code is an internal fault: its text
// is logged and never shown to the caller.
package apperr

import (
	"errors"
	"fmt"
	"time"
)

// Code is a stable, machine-readable error class. Clients switch on it; it never changes
// meaning once published.
type Code string

// The codes. Each maps to exactly one HTTP status (see Status).
const (
	Invalid            Code = "invalid"
	Unauthenticated    Code = "unauthenticated"
	Forbidden          Code = "forbidden"
	NotFound           Code = "not_found"
	Conflict           Code = "conflict"
	PreconditionFailed Code = "precondition_failed"
	QuotaExceeded      Code = "quota_exceeded"
	RateLimited        Code = "rate_limited"
	Unavailable        Code = "unavailable"
	Internal           Code = "internal"
)

// Codes lists every code, in a stable order.
var Codes = []Code{Invalid, Unauthenticated, Forbidden, NotFound, Conflict, PreconditionFailed,
	QuotaExceeded, RateLimited, Unavailable, Internal}

// Valid reports whether c is one of the defined codes.
func (c Code) Valid() bool {
	_, ok := statusOf[c]
	return ok
}

// FieldError names one invalid input field. Field is a JSON-pointer-like path such as
// "ports/0/port"; Reason is a human sentence.
type FieldError struct {
	Field  string `json:"field"`
	Reason string `json:"reason"`
}

// Error is an application error: a code, a message that is safe to show to the caller,
// optional field details and retry advice, and an optional cause that is never shown.
type Error struct {
	Code    Code
	Message string
	Fields  []FieldError
	// RetryAfter, when positive, tells the caller when a retry may succeed
	// (rate_limited, unavailable).
	RetryAfter time.Duration
	// Cause is the underlying fault, kept for logs and errors.Is; never sent to clients.
	Cause error
}

// Error implements error. It includes the cause, so logs carry it.
func (e *Error) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Cause)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Cause }

// Is makes errors.Is(err, &Error{Code: c}) match any *Error with code c, so callers can
// test for a class without a sentinel per message.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Message == "" && t.Cause == nil && t.Code == e.Code
}

// New returns an error with the given code and message.
func New(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Wrap returns an error with the given code and message whose cause is err.
func Wrap(err error, code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Cause: err}
}

// Validation returns an invalid error listing the offending fields.
func Validation(message string, fields ...FieldError) *Error {
	return &Error{Code: Invalid, Message: message, Fields: fields}
}

// Field is shorthand for a FieldError.
func Field(field, reason string) FieldError { return FieldError{Field: field, Reason: reason} }

// As returns the first *Error in err's chain.
func As(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}

// CodeOf returns the code of the first *Error in err's chain, Internal for any other
// non-nil error, and "" for nil.
func CodeOf(err error) Code {
	if err == nil {
		return ""
	}
	if e, ok := As(err); ok {
		return e.Code
	}
	return Internal
}

// IsCode reports whether err's code is c.
func IsCode(err error, c Code) bool { return err != nil && CodeOf(err) == c }
