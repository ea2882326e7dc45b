package ackhandler

// StreamSpace patch 0001: tests of acknowledging at once after idle (see
// libs/third_party/quic-go/README.md in the StreamSpace repository).

import (
	"testing"
	"time"

	"github.com/quic-go/quic-go/internal/monotime"
	"github.com/quic-go/quic-go/internal/protocol"
	"github.com/quic-go/quic-go/internal/utils"
)

// The first ack-eliciting packet of a connection, and the first after a pause of at least
// max_ack_delay, is acknowledged at once: no ACK alarm is armed for it.
func TestStreamSpaceAckAfterIdle(t *testing.T) {
	tr := newAppDataReceivedPacketTracker(utils.DefaultLogger)
	now := monotime.Now()

	if err := tr.ReceivedPacket(1, protocol.ECNNon, now, true); err != nil {
		t.Fatal(err)
	}
	if ack := tr.GetAckFrame(now, true); ack == nil || ack.LargestAcked() != 1 {
		t.Fatalf("first packet: ACK %v, want one acknowledging packet 1 at once", ack)
	}
	if !tr.GetAlarmTimeout().IsZero() {
		t.Fatalf("first packet: ACK alarm armed at %v", tr.GetAlarmTimeout())
	}

	// A heartbeat 10 s later: acknowledged at once again.
	later := now.Add(10 * time.Second)
	if err := tr.ReceivedPacket(2, protocol.ECNNon, later, true); err != nil {
		t.Fatal(err)
	}
	if ack := tr.GetAckFrame(later, true); ack == nil || ack.LargestAcked() != 2 {
		t.Fatalf("packet after 10 s of idle: ACK %v, want one acknowledging packet 2 at once", ack)
	}
	if !tr.GetAlarmTimeout().IsZero() {
		t.Fatalf("packet after idle: ACK alarm armed at %v", tr.GetAlarmTimeout())
	}

	// Exactly max_ack_delay after the previous one still counts as idle.
	edge := later.Add(MaxAckDelay)
	if err := tr.ReceivedPacket(3, protocol.ECNNon, edge, true); err != nil {
		t.Fatal(err)
	}
	if ack := tr.GetAckFrame(edge, true); ack == nil {
		t.Fatal("packet max_ack_delay after the previous one: no ACK queued")
	}
}

// Packets closer together than max_ack_delay keep upstream's policy: an ACK every second
// ack-eliciting packet, and an ACK alarm at max_ack_delay for an odd one out.
func TestStreamSpaceAckDelayedWhenBusy(t *testing.T) {
	tr := newAppDataReceivedPacketTracker(utils.DefaultLogger)
	now := monotime.Now()
	if err := tr.ReceivedPacket(1, protocol.ECNNon, now, true); err != nil {
		t.Fatal(err)
	}
	if tr.GetAckFrame(now, true) == nil {
		t.Fatal("first packet: no ACK queued")
	}
	for pn := protocol.PacketNumber(2); pn <= 21; pn++ {
		rcv := now.Add(time.Duration(pn) * time.Millisecond)
		if err := tr.ReceivedPacket(pn, protocol.ECNNon, rcv, true); err != nil {
			t.Fatal(err)
		}
		ack := tr.GetAckFrame(rcv, true)
		if pn%2 == 1 {
			if ack == nil || ack.LargestAcked() != pn {
				t.Fatalf("packet %d (second since the last ACK): ACK %v, want one up to %d", pn, ack, pn)
			}
			continue
		}
		if ack != nil {
			t.Fatalf("packet %d (first since the last ACK, 1 ms after the previous): ACK %v, want it delayed", pn, ack)
		}
		if want := rcv.Add(MaxAckDelay); tr.GetAlarmTimeout() != want {
			t.Fatalf("packet %d: ACK alarm %v, want %v", pn, tr.GetAlarmTimeout(), want)
		}
	}
}

// A packet that is not ack-eliciting neither queues an ACK nor counts as activity.
func TestStreamSpaceAckAfterIdleIgnoresNonAckEliciting(t *testing.T) {
	tr := newAppDataReceivedPacketTracker(utils.DefaultLogger)
	now := monotime.Now()
	if err := tr.ReceivedPacket(1, protocol.ECNNon, now, false); err != nil {
		t.Fatal(err)
	}
	if ack := tr.GetAckFrame(now, true); ack != nil {
		t.Fatalf("non-ack-eliciting packet: ACK %v queued", ack)
	}
	rcv := now.Add(time.Millisecond)
	if err := tr.ReceivedPacket(2, protocol.ECNNon, rcv, true); err != nil {
		t.Fatal(err)
	}
	if ack := tr.GetAckFrame(rcv, true); ack == nil {
		t.Fatal("first ack-eliciting packet after only a non-ack-eliciting one: no ACK queued")
	}
}
