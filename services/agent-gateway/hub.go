package gateway

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// hub is the set of tunnels this replica holds, at most one per agent, and the LISTEN
// connection that tells it about their agents.
type hub struct {
	log   *slog.Logger
	mu    sync.Mutex
	conns map[AgentID]*agentConn
	ln    *notifier
}

func newHub(log *slog.Logger, connCfg *pgx.ConnConfig) *hub {
	h := &hub{log: log, conns: map[AgentID]*agentConn{}}
	h.ln = newNotifier(log, connCfg, h.notified, h.listening, h.reconnected)
	return h
}

// add makes c the agent's tunnel on this replica. An older tunnel of the same agent is
// closed: the newest connection wins, here as across replicas.
func (h *hub) add(c *agentConn) {
	h.mu.Lock()
	old := h.conns[c.id.Agent]
	h.conns[c.id.Agent] = c
	h.mu.Unlock()
	if old != nil && old != c {
		old.close(closeSuperseded)
	}
	h.ln.listen(AgentChannel(c.id.Agent))
}

// remove forgets c if it is still the agent's tunnel.
func (h *hub) remove(c *agentConn) {
	h.mu.Lock()
	cur := h.conns[c.id.Agent]
	if cur == c {
		delete(h.conns, c.id.Agent)
	}
	h.mu.Unlock()
	if cur == c {
		h.ln.unlisten(AgentChannel(c.id.Agent))
	}
}

func (h *hub) get(id AgentID) *agentConn {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.conns[id]
}

func (h *hub) all() []*agentConn {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*agentConn, 0, len(h.conns))
	for _, c := range h.conns {
		out = append(out, c)
	}
	return out
}

// owned returns the connection id of every held tunnel, for the owner heartbeat.
func (h *hub) owned() map[AgentID]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[AgentID]string, len(h.conns))
	for id, c := range h.conns {
		out[id] = c.connID
	}
	return out
}

// notified dispatches a NOTIFY on an agent channel to the agent's tunnel, if held here.
func (h *hub) notified(channel, payload string) {
	id, ok := strings.CutPrefix(channel, "ss_agent_")
	if !ok {
		return
	}
	c := h.get(AgentID(id))
	if c == nil {
		return
	}
	switch {
	case payload == NotifyWork:
		c.poke()
	case payload == NotifyRevoked:
		c.close(closeRevoked)
	case strings.HasPrefix(payload, NotifyOwner):
		if payload[len(NotifyOwner):] != c.connID {
			c.close(closeSuperseded)
		}
	}
}

// listening runs once a LISTEN is in effect: anything announced before it was missed, so
// the tunnel re-reads its pending work.
func (h *hub) listening(channel string) { h.notified(channel, NotifyWork) }

// reconnected runs after the LISTEN connection was re-established: every notification of
// the gap may be lost, so every tunnel re-reads.
func (h *hub) reconnected() {
	for _, c := range h.all() {
		c.poke()
	}
}

// notifier owns one dedicated PostgreSQL connection that LISTENs on the channels the hub
// asks for. Changing the set interrupts the wait, applies LISTEN/UNLISTEN, and waits again.
// Losing the connection re-dials with backoff and re-LISTENs everything.
type notifier struct {
	log         *slog.Logger
	cfg         *pgx.ConnConfig
	onNotify    func(channel, payload string)
	onListen    func(channel string)
	onReconnect func()

	mu   sync.Mutex
	want map[string]bool
	poke chan struct{}
}

func newNotifier(log *slog.Logger, cfg *pgx.ConnConfig, onNotify func(string, string), onListen func(string), onReconnect func()) *notifier {
	return &notifier{log: log, cfg: cfg, onNotify: onNotify, onListen: onListen, onReconnect: onReconnect,
		want: map[string]bool{}, poke: make(chan struct{}, 1)}
}

func (n *notifier) listen(ch string) {
	n.mu.Lock()
	n.want[ch] = true
	n.mu.Unlock()
	n.wake()
}

func (n *notifier) unlisten(ch string) {
	n.mu.Lock()
	delete(n.want, ch)
	n.mu.Unlock()
	n.wake()
}

func (n *notifier) wake() {
	select {
	case n.poke <- struct{}{}:
	default:
	}
}

// run serves until ctx ends.
func (n *notifier) run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	first := true
	for ctx.Err() == nil {
		err := n.session(ctx, !first)
		if ctx.Err() != nil {
			return
		}
		first = false
		n.log.Warn("LISTEN connection lost; reconnecting", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// session runs one connection's life.
func (n *notifier) session(ctx context.Context, again bool) error {
	conn, err := pgx.ConnectConfig(ctx, n.cfg.Copy())
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	have := map[string]bool{}
	if again {
		n.onReconnect()
	}
	for {
		if err := n.sync(ctx, conn, have); err != nil {
			return err
		}
		waitCtx, cancel := context.WithCancel(ctx)
		stop := make(chan struct{})
		go func() {
			select {
			case <-n.poke:
				cancel()
			case <-stop:
			}
		}()
		note, err := conn.WaitForNotification(waitCtx)
		close(stop)
		cancel()
		switch {
		case err == nil:
			n.onNotify(note.Channel, note.Payload)
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.Canceled) || waitCtx.Err() != nil:
			// Interrupted to change the channel set; the connection survives a cancelled
			// wait (pgx interrupts it with a deadline), unless it reports otherwise.
			if conn.IsClosed() {
				return err
			}
		default:
			return err
		}
	}
}

// sync brings the connection's LISTEN set to the wanted one.
func (n *notifier) sync(ctx context.Context, conn *pgx.Conn, have map[string]bool) error {
	n.mu.Lock()
	var add, drop []string
	for ch := range n.want {
		if !have[ch] {
			add = append(add, ch)
		}
	}
	for ch := range have {
		if !n.want[ch] {
			drop = append(drop, ch)
		}
	}
	n.mu.Unlock()
	for _, ch := range add {
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
			return err
		}
		have[ch] = true
		n.onListen(ch)
	}
	for _, ch := range drop {
		if _, err := conn.Exec(ctx, "UNLISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
			return err
		}
		delete(have, ch)
	}
	return nil
}
