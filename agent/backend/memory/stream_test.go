package memory_test

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"streamspace.dev/agent/backend/memory"
	"streamspace.dev/libs/wire"
)

func TestDialSession(t *testing.T) {
	t.Parallel()
	b := memory.New(memory.Config{})
	t.Cleanup(b.Close)
	ctx := context.Background()
	const id = wire.SessionID("ses_a")
	refused := func(code wire.Code, port string, number int) {
		t.Helper()
		_, err := b.DialSession(ctx, id, port, number)
		if e, ok := errors.AsType[*wire.Error](err); !ok || e.Code != code {
			t.Fatalf("dial %q/%d: %v, want %s", port, number, err, code)
		}
	}
	refused(wire.CodeNotFound, memory.StreamPortName, 0)

	b.Apply(ctx, []wire.Assignment{{SessionID: id, TenantID: "t", Generation: 1, Desired: wire.DesiredRunning}})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if st, _ := b.Status(id); st.Phase == wire.PhaseRunning {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the session never ran")
		}
		time.Sleep(5 * time.Millisecond)
	}
	refused(wire.CodeNotFound, "audio", 0)
	refused(wire.CodeNotFound, "", 5901)

	c, err := b.DialSession(ctx, id, "", memory.StreamPort)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, len(memory.Greeting)+5)
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != memory.Greeting+"hello" {
		t.Fatalf("read %q, %v", buf, err)
	}

	b.FailDial(id, &wire.Error{Code: wire.CodeForbidden, Message: "injected", Permanent: true})
	refused(wire.CodeForbidden, memory.StreamPortName, 0)
	b.FailDial(id, nil)

	// Hibernating takes the endpoint away: open streams end, new ones are refused.
	b.Apply(ctx, []wire.Assignment{{SessionID: id, TenantID: "t", Generation: 2, Desired: wire.DesiredHibernated}})
	if n, err := io.Copy(io.Discard, c); err != nil || n != 0 {
		t.Fatalf("the stream of a hibernated session: %d more bytes, %v", n, err)
	}
	refused(wire.CodeUnavailable, memory.StreamPortName, 0)
}
