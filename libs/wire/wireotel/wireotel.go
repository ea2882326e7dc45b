// Package wireotel carries OpenTelemetry trace context across the agent tunnel in the
// traceparent and tracestate fields of a wire.Envelope, so that one trace runs from an API
// call through the gateway to the agent's Kubernetes calls. It is separate from package
// wire so that the codec itself stays standard-library only.
//
// It always uses the W3C Trace Context format, whatever global propagator the process
// installed: the envelope has exactly those two fields, and a composite global propagator
// (baggage, B3) would have nowhere to put the rest.
package wireotel

import (
	"context"

	"go.opentelemetry.io/otel/propagation"

	"streamspace.dev/libs/wire"
)

var tc propagation.TraceContext

// carrier adapts an Envelope to propagation.TextMapCarrier.
type carrier struct{ env *wire.Envelope }

// Get implements propagation.TextMapCarrier.
func (c carrier) Get(key string) string {
	switch key {
	case "traceparent":
		return c.env.TraceParent
	case "tracestate":
		return c.env.TraceState
	}
	return ""
}

// Set implements propagation.TextMapCarrier; keys other than the two fields are dropped.
func (c carrier) Set(key, value string) {
	switch key {
	case "traceparent":
		c.env.TraceParent = value
	case "tracestate":
		c.env.TraceState = value
	}
}

// Keys implements propagation.TextMapCarrier.
func (c carrier) Keys() []string { return []string{"traceparent", "tracestate"} }

// Inject writes the span context of ctx into env. Without a valid span context it leaves
// env unchanged, so a message sent outside any trace carries no trace fields.
func Inject(ctx context.Context, env *wire.Envelope) {
	tc.Inject(ctx, carrier{env})
}

// Extract returns ctx with the remote span context carried by env, ready to be the parent
// of the receiver's span. A missing or invalid traceparent yields ctx unchanged: a peer's
// bad trace header must never fail a message.
func Extract(ctx context.Context, env wire.Envelope) context.Context {
	return tc.Extract(ctx, carrier{&env})
}

// Write sends msg on w with the trace context of ctx.
func Write(ctx context.Context, w *wire.Writer, msg wire.Message) error {
	env := wire.Envelope{Message: msg}
	Inject(ctx, &env)
	return w.WriteEnvelope(env)
}

// Read returns the next message from r and ctx extended with its trace context.
func Read(ctx context.Context, r *wire.Reader) (context.Context, wire.Message, error) {
	env, err := r.ReadEnvelope()
	if err != nil {
		return ctx, nil, err
	}
	return Extract(ctx, env), env.Message, nil
}
