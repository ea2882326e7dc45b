package wire

import (
	"encoding/json"
	"fmt"
	"time"
)

// sampleTraceParent is the W3C specification's example.
const sampleTraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

var t0 = time.Date(2025, 3, 14, 15, 9, 26, 0, time.UTC)

// samples holds one representative value of every message type, each on a stream type it
// may use. The golden files pin their encodings; adding a type without a sample fails
// TestEveryTypeHasASample.
var samples = []struct {
	name   string
	stream StreamType
	env    Envelope
}{
	{"hello", StreamControl, Envelope{TraceParent: sampleTraceParent, TraceState: "congo=t61rcWkgMzE", Message: &Hello{
		AgentID: "agt_7f3k2m", AgentVersion: "1.4.2", Protocol: Version{1, 0},
		Capabilities: []string{"hibernate", "gpu"},
		Cluster:      map[string]string{"kubernetes_version": "v1.31.2", "platform": "eks", "region": "eu-west-1"},
		Capacity: Capacity{CPUAllocatableMillis: 64000, CPUUsedMillis: 12500,
			MemoryAllocatableBytes: 256 << 30, MemoryUsedBytes: 48 << 30, Sessions: 7, MaxSessions: 50},
	}}},
	// Since 1.1: operator tags and the applied set's checksum.
	{"hello_1_1", StreamControl, Envelope{TraceParent: sampleTraceParent, Message: &Hello{
		AgentID: "agt_7f3k2m", AgentVersion: "1.5.0", Protocol: Version{1, 1},
		Capabilities:    []string{"hibernate"},
		Tags:            []string{"gpu", "zone=eu-west-1a"},
		Cluster:         map[string]string{"kubernetes_version": "v1.31.2", "platform": "eks"},
		Capacity:        Capacity{CPUAllocatableMillis: 64000, MemoryAllocatableBytes: 256 << 30, Sessions: 2},
		AppliedChecksum: Checksum(sampleAssignments(2)),
	}}},
	{"hello_ack", StreamControl, Envelope{Message: &HelloAck{
		GatewayID: "gw-0", Accepted: Version{1, 0}, HeartbeatInterval: 10 * time.Second,
		DesiredChecksum: Checksum(sampleAssignments(2)),
	}}},
	{"heartbeat", StreamControl, Envelope{Message: &Heartbeat{Seq: 42, Capacity: &Capacity{
		CPUAllocatableMillis: 64000, CPUUsedMillis: 14500, MemoryAllocatableBytes: 256 << 30,
		MemoryUsedBytes: 52 << 30, Sessions: 8,
	}}}},
	// Since 1.2: a heartbeat without capacity, liveness only.
	{"heartbeat_1_2", StreamControl, Envelope{Message: &Heartbeat{Seq: 43}}},
	{"desired_state", StreamDesiredState, Envelope{TraceParent: sampleTraceParent, Message: &DesiredState{
		Full: true, Checksum: Checksum(sampleAssignments(2)), Assignments: sampleAssignments(2),
	}}},
	{"ack", StreamDesiredState, Envelope{Message: &Ack{SessionID: "ses_0001", Generation: 7}}},
	{"ack_error", StreamDesiredState, Envelope{Message: &Ack{SessionID: "ses_0002", Generation: 3, Error: &Error{
		Code: CodeQuotaExceeded, Message: "namespace quota exhausted: requests.cpu", RetryAfter: 30 * time.Second,
	}}}},
	{"status_report", StreamControl, Envelope{Message: &StatusReport{Full: true, Sessions: []SessionStatus{
		{SessionID: "ses_0001", Phase: PhaseRunning, ObservedGeneration: 7,
			Endpoint:       &Endpoint{Host: "ses-0001.streamspace-sessions.svc", Port: 5901, Protocol: "vnc"},
			LastTransition: t0, ObservedAt: t0.Add(90 * time.Second)},
		{SessionID: "ses_0002", Phase: PhaseFailed, Reason: "ImagePullBackOff",
			Message: `pulling "registry.example/gimp:3" failed`, ObservedGeneration: 2, ObservedAt: t0.Add(90 * time.Second)},
	}}}},
	{"error", StreamControl, Envelope{Message: &Error{Code: CodeForbidden, Message: "agent revoked", Permanent: true}}},
	// What a gateway whose database is unreachable says before closing with
	// CloseUnavailable: retry later, nothing is wrong with the agent.
	{"error_unavailable", StreamControl, Envelope{Message: &Error{Code: CodeUnavailable,
		Message: "the agent registry is unreachable; try again later", RetryAfter: 5 * time.Second}}},
	{"goodbye", StreamControl, Envelope{Message: &Goodbye{Reason: GoodbyeDrain, Message: "gateway gw-0 is restarting", ReconnectElsewhere: true}}},
	{"cert_renew_request", StreamCert, Envelope{Message: &CertRenewRequest{
		CSRPEM: "-----BEGIN CERTIFICATE REQUEST-----\nMIIBHjCBxQIBADBG\n-----END CERTIFICATE REQUEST-----\n",
	}}},
	{"cert_renew_response", StreamCert, Envelope{Message: &CertRenewResponse{
		CertificatePEM: "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n" +
			"-----BEGIN CERTIFICATE-----\nMIIBjTCCATOgAwIBAgIU\n-----END CERTIFICATE-----\n",
	}}},
	{"session_stream_header", StreamSession, Envelope{Message: &SessionStreamHeader{SessionID: "ses_0001", PortName: "vnc", Port: 5901}}},
}

// sampleAssignments returns n distinct assignments with small specs.
func sampleAssignments(n int) []Assignment {
	out := make([]Assignment, n)
	desired := []Desired{DesiredRunning, DesiredHibernated, DesiredStopped, DesiredDeleted}
	for i := range out {
		out[i] = Assignment{
			SessionID:  SessionID(fmt.Sprintf("ses_%04d", i+1)),
			TenantID:   "acmecorpxyz2",
			Generation: int64(7 + i),
			Desired:    desired[i%len(desired)],
			Spec: json.RawMessage(fmt.Sprintf(`{"template":"firefox","image":"registry.example/firefox:128",`+
				`"resources":{"cpu":"2","memory":"4Gi"},"ports":[{"name":"vnc","port":5901}],"env":{"HOME":"/home/u%d"}}`, i)),
		}
	}
	return out
}
