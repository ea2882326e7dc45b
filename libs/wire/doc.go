// Package wire is the versioned protocol between the customer-installed agent and the
// agent-gateway. PROTOCOL.md in this directory is its specification; this package is the
// reference codec and must agree with it byte for byte (the golden tests enforce that).
//
// The package is transport-agnostic: it reads from an io.Reader and writes to an
// io.Writer, so it can be fuzzed and tested without QUIC, and the agent and the gateway
// share one codec whatever carries the bytes. The transport contributes only the ALPN
// (see ALPN and SupportedALPNs) and one stream per conversation.
//
// Each stream begins with a Preamble (signature, protocol version, stream type) and then
// carries length-prefixed JSON envelopes, each holding one Message plus its W3C trace
// context. Decoding failures are *ProtocolError values with a Kind; failures the peer
// reports are *Error values carrying their retry policy, which Retryable reads. Callers
// switch on types and codes, never on error text.
//
// Trace propagation through OpenTelemetry lives in the subpackage wireotel so that this
// package stays standard-library only.
package wire
