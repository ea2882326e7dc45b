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
	// sweeps asks the replica's sweep which of the given agents have pending work.
	sweeps *sweeper
	// recheck asks the owner loop to check every held claim now: notifications that
	// would have said a claim was lost may have been missed.
	recheck chan struct{}
}

func newHub(log *slog.Logger, connCfg *pgx.ConnConfig) *hub {
	h := &hub{log: log, conns: map[AgentID]*agentConn{}, sweeps: newSweeper(), recheck: make(chan struct{}, 1)}
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

// owned returns the connection id of every held tunnel, for the claim check.
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

// listening runs once LISTENs are in effect: anything announced on those channels before
// was missed, so the sweep asks, in one query per tenant, which of those agents have
// pending work, and wakes only their tunnels.
func (h *hub) listening(channels []string) {
	ids := make([]AgentID, 0, len(channels))
	for _, ch := range channels {
		if id, ok := strings.CutPrefix(ch, "ss_agent_"); ok {
			ids = append(ids, AgentID(id))
		}
	}
	h.sweeps.want(ids)
}

// reconnected runs after the LISTEN connection was re-established: every notification of
// the gap may be lost, so the sweep checks every tunnel for work and the owner loop every
// claim, at once.
func (h *hub) reconnected() {
	h.sweeps.wantAll()
	select {
	case h.recheck <- struct{}{}:
	default:
	}
}

// sweeper collects the agents whose pending work must be looked up outside the periodic
// sweep (their LISTEN just took effect, or the LISTEN connection was lost), for the
// replica's one sweep loop to look up together.
type sweeper struct {
	mu   sync.Mutex
	ids  map[AgentID]bool
	all  bool
	kick chan struct{}
}

func newSweeper() *sweeper {
	return &sweeper{ids: map[AgentID]bool{}, kick: make(chan struct{}, 1)}
}

func (s *sweeper) want(ids []AgentID) {
	if len(ids) == 0 {
		return
	}
	s.mu.Lock()
	for _, id := range ids {
		s.ids[id] = true
	}
	s.mu.Unlock()
	s.wake()
}

func (s *sweeper) wantAll() {
	s.mu.Lock()
	s.all = true
	s.mu.Unlock()
	s.wake()
}

func (s *sweeper) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// take returns and clears what was asked for.
func (s *sweeper) take() (ids map[AgentID]bool, all bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids, all = s.ids, s.all
	s.ids, s.all = map[AgentID]bool{}, false
	return ids, all
}

// beats holds the newest heartbeat of every tunnel that beat since the last flush: the
// replica writes them per tenant in one statement, instead of one transaction per
// heartbeat. A tunnel's last_seen then lags by at most the flush interval.
type beats struct {
	mu sync.Mutex
	m  map[AgentID]beat
}

// beat is one tunnel's newest heartbeat, with the newest capacity the tunnel reported
// since the last flush: a heartbeat without capacity (wire 1.2) means "unchanged", so it
// must not erase one an earlier beat of the same interval carried.
type beat struct {
	c        *agentConn
	capacity *Capacity
}

// record notes a heartbeat of c; capacity is nil when the beat carried none.
func (b *beats) record(c *agentConn, capacity *Capacity) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = map[AgentID]beat{}
	}
	if cur, ok := b.m[c.id.Agent]; ok && capacity == nil && cur.c == c {
		capacity = cur.capacity
	}
	b.m[c.id.Agent] = beat{c: c, capacity: capacity}
}

// forget drops c's unwritten beat: a closing tunnel must not mark its agent online after
// it was released.
func (b *beats) forget(c *agentConn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if cur, ok := b.m[c.id.Agent]; ok && cur.c == c {
		delete(b.m, c.id.Agent)
	}
}

// take returns and clears the beats to write.
func (b *beats) take() map[AgentID]beat {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := b.m
	b.m = nil
	return out
}

// restore puts back beats whose write failed, unless a newer beat arrived meanwhile; a
// newer beat of the same tunnel without capacity takes the failed beat's.
func (b *beats) restore(failed []beat) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = map[AgentID]beat{}
	}
	for _, x := range failed {
		cur, newer := b.m[x.c.id.Agent]
		switch {
		case !newer:
			b.m[x.c.id.Agent] = x
		case cur.capacity == nil && cur.c == x.c:
			cur.capacity = x.capacity
			b.m[x.c.id.Agent] = cur
		}
	}
}

// notifier owns one dedicated PostgreSQL connection that LISTENs on the channels the hub
// asks for. Changing the set interrupts the wait, applies LISTEN/UNLISTEN, and waits again.
// Losing the connection re-dials with backoff and re-LISTENs everything.
type notifier struct {
	log         *slog.Logger
	cfg         *pgx.ConnConfig
	onNotify    func(channel, payload string)
	onListen    func(channels []string)
	onReconnect func()

	mu   sync.Mutex
	want map[string]bool
	poke chan struct{}
}

func newNotifier(log *slog.Logger, cfg *pgx.ConnConfig, onNotify func(string, string), onListen func([]string), onReconnect func()) *notifier {
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
	// Many (UN)LISTENs go in one round trip: an agent storm adds thousands at once, and
	// one statement per channel would queue each behind the last.
	for len(add) > 0 {
		batch := add[:min(len(add), listenBatch)]
		add = add[len(batch):]
		if err := execEach(ctx, conn, "LISTEN ", batch); err != nil {
			return err
		}
		for _, ch := range batch {
			have[ch] = true
		}
		n.onListen(batch)
	}
	for len(drop) > 0 {
		batch := drop[:min(len(drop), listenBatch)]
		drop = drop[len(batch):]
		if err := execEach(ctx, conn, "UNLISTEN ", batch); err != nil {
			return err
		}
		for _, ch := range batch {
			delete(have, ch)
		}
	}
	return nil
}

// listenBatch bounds the channels of one LISTEN round trip.
const listenBatch = 500

// execEach runs verb on every channel in one simple-protocol round trip (an Exec without
// arguments), which PostgreSQL runs as one implicit transaction.
func execEach(ctx context.Context, conn *pgx.Conn, verb string, channels []string) error {
	var b strings.Builder
	for _, ch := range channels {
		b.WriteString(verb)
		b.WriteString(pgx.Identifier{ch}.Sanitize())
		b.WriteString(";")
	}
	_, err := conn.Exec(ctx, b.String())
	return err
}
