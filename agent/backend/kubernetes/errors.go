package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"streamspace.dev/libs/wire"
)

// invalid is the error for a spec the cluster can never run.
func invalid(msg string) *wire.Error {
	return &wire.Error{Code: wire.CodeInvalid, Message: msg, Permanent: true}
}

// apiError turns a failed Kubernetes call into a *wire.Error that says whether retrying
// can help, with a message an operator can act on ("what" names the call, e.g. "create
// secrets ss-x-creds"). The gateway decides retries by the code and Permanent, never by
// the text, so the text is free to carry the apiserver's own words.
func apiError(ns, what string, err error) error {
	if err == nil {
		return nil
	}
	if we, ok := errors.AsType[*wire.Error](err); ok {
		return we
	}
	msg := fmt.Sprintf("kubernetes: %s in namespace %s: %v", what, ns, err)
	retryAfter := time.Duration(0)
	if s, ok := apierrors.SuggestsClientDelay(err); ok {
		retryAfter = time.Duration(s) * time.Second
	}
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return &wire.Error{Code: wire.CodeUnavailable, Message: msg}
	case apierrors.IsForbidden(err):
		// Retrying cannot help until an operator grants the verb (or frees quota, which
		// the apiserver also reports as Forbidden); the periodic resync retries anyway
		// once the session exists, so nothing is lost by saying so.
		return &wire.Error{Code: wire.CodeForbidden, Message: msg + " (grant the agent's Role this verb, or check the namespace's ResourceQuota)", Permanent: true}
	case apierrors.IsUnauthorized(err):
		return &wire.Error{Code: wire.CodeUnauthenticated, Message: msg, Permanent: true}
	case apierrors.IsInvalid(err), apierrors.IsBadRequest(err), apierrors.IsRequestEntityTooLargeError(err):
		return &wire.Error{Code: wire.CodeInvalid, Message: msg, Permanent: true}
	case apierrors.IsNotFound(err):
		// On a create or apply the only thing that can be missing is the namespace.
		return &wire.Error{Code: wire.CodePreconditionFailed, Message: msg, Permanent: true}
	case apierrors.IsConflict(err), apierrors.IsAlreadyExists(err):
		return &wire.Error{Code: wire.CodeConflict, Message: msg}
	case apierrors.IsTooManyRequests(err):
		return &wire.Error{Code: wire.CodeRateLimited, Message: msg, RetryAfter: retryAfter}
	default:
		// Timeouts, 5xx, refused connections: the apiserver is likely back soon.
		return &wire.Error{Code: wire.CodeUnavailable, Message: msg, RetryAfter: retryAfter}
	}
}

// errNotSynced is returned while the informers have not yet listed the namespace.
var errNotSynced = &wire.Error{Code: wire.CodeUnavailable, Message: "kubernetes: the agent has not finished listing its namespace yet", RetryAfter: time.Second}
