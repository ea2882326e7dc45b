package wire

import (
	"bytes"
	"testing"
)

// benchRoundTrip writes msg and reads it back through one Writer and Reader on a reused
// buffer, as a long-lived stream would.
func benchRoundTrip(b *testing.B, stream StreamType, msg Message) {
	var buf bytes.Buffer
	w := NewWriterSize(&buf, MaxSizeLimit)
	r := NewReader(&buf, MaxSizeLimit)
	if err := w.WritePreamble(stream); err != nil {
		b.Fatal(err)
	}
	if _, err := r.ReadPreamble(); err != nil {
		b.Fatal(err)
	}
	if err := w.Write(msg); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(buf.Len()))
	if _, err := r.Read(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := w.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := r.Read(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHeartbeat(b *testing.B) {
	benchRoundTrip(b, StreamControl, &Heartbeat{Seq: 1 << 40, Capacity: &Capacity{
		CPUAllocatableMillis: 64000, CPUUsedMillis: 14500, MemoryAllocatableBytes: 256 << 30,
		MemoryUsedBytes: 52 << 30, Sessions: 8, MaxSessions: 50,
	}})
}

// BenchmarkHeartbeatLiveness is a heartbeat without capacity (since 1.2), what five of
// every CapacityRefresh beats of an agent with steady capacity are.
func BenchmarkHeartbeatLiveness(b *testing.B) {
	benchRoundTrip(b, StreamControl, &Heartbeat{Seq: 1 << 40})
}

func BenchmarkDesiredState100(b *testing.B) {
	set := sampleAssignments(100)
	benchRoundTrip(b, StreamDesiredState, &DesiredState{Full: true, Checksum: Checksum(set), Assignments: set})
}

func BenchmarkChecksum100(b *testing.B) {
	set := sampleAssignments(100)
	b.ReportAllocs()
	for b.Loop() {
		_ = Checksum(set)
	}
}
