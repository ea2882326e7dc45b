package feed

import (
	"context"
	"fmt"
	"testing"
	"time"

	"streamspace.dev/libs/wire"
)

func TestPublishNeverBlocksAndKeepsOrder(t *testing.T) {
	t.Parallel()
	var f Feed
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := f.Subscribe(ctx, nil)
	// Nobody reads yet: a blocking publisher would hang here.
	for i := range 1000 {
		f.Publish(wire.SessionStatus{SessionID: wire.SessionID(fmt.Sprintf("s%d", i))})
	}
	for i := range 1000 {
		st := <-ch
		if want := wire.SessionID(fmt.Sprintf("s%d", i)); st.SessionID != want {
			t.Fatalf("got %s, want %s", st.SessionID, want)
		}
	}
}

func TestSubscriptionEndsWithContextOrStop(t *testing.T) {
	t.Parallel()
	var f Feed
	ctx, cancel := context.WithCancel(context.Background())
	a := f.Subscribe(ctx, nil)
	stop := make(chan struct{})
	b := f.Subscribe(context.Background(), stop)
	cancel()
	close(stop)
	for _, ch := range []<-chan wire.SessionStatus{a, b} {
		select {
		case _, open := <-ch:
			if open {
				t.Fatal("received after the subscription ended")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("subscription never closed")
		}
	}
	f.Publish(wire.SessionStatus{SessionID: "after"}) // no watchers left: must not block
}
