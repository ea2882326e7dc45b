package sessions

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	kithttp "github.com/go-kit/kit/transport/http"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/kitx"
	"streamspace.dev/libs/tenant"
)

// MaxJSONBody bounds a request body; a create request is well under a KiB.
const MaxJSONBody = 64 << 10

// OpenAPIPath serves the service's OpenAPI document.
const OpenAPIPath = "/api/v1/sessions/openapi.json"

// WatchPath is the live stream of session changes (server-sent events).
const WatchPath = "/api/v1/sessions:watch"

//go:embed openapi.json
var openAPI []byte

// OpenAPI returns the embedded OpenAPI 3.1 document.
func OpenAPI() []byte { return openAPI }

// Route is one served route (see kitx.Route).
type Route = kitx.Route

// MakeRoutes returns the service's routes. Every route but the OpenAPI document expects
// the caller's principal in the context (auth.Middleware); the module wraps them. The live
// stream reads through svc, so it sees exactly what Get and List would show the caller.
func MakeRoutes(e Endpoints, svc Service, hub *Hub, logger *slog.Logger) []Route {
	opts := kitx.ServerOptions(logger)
	var routes []Route
	add := func(method, pattern string, ep func(context.Context, any) (any, error), dec kithttp.DecodeRequestFunc, status int) {
		routes = append(routes, Route{Method: method, Pattern: pattern,
			Handler: kithttp.NewServer(ep, dec, kitx.EncodeJSON(status), opts...)})
	}
	routes = append(routes,
		Route{Method: http.MethodGet, Pattern: OpenAPIPath, Public: true, Handler: http.HandlerFunc(serveOpenAPI)},
		Route{Method: http.MethodGet, Pattern: WatchPath, Handler: WatchHandler(svc, hub, 15*time.Second, logger)})
	const base = "/api/v1/sessions"
	add(http.MethodPost, base, e.Create, decodeCreate, http.StatusCreated)
	add(http.MethodGet, base, e.List, decodeList, http.StatusOK)
	add(http.MethodGet, base+"/{id}", e.Get, decodeID, http.StatusOK)
	add(http.MethodDelete, base+"/{id}", e.Delete, decodeID, http.StatusNoContent)
	add(http.MethodPost, base+"/{id}/hibernate", e.Hibernate, decodeID, http.StatusOK)
	add(http.MethodPost, base+"/{id}/wake", e.Wake, decodeID, http.StatusOK)
	add(http.MethodPost, base+"/{id}/stop", e.Stop, decodeID, http.StatusOK)
	add(http.MethodPost, base+"/{id}/heartbeat", e.Heartbeat, decodeID, http.StatusNoContent)
	add(http.MethodPut, base+"/{id}/tags", e.SetTags, decodeTags, http.StatusOK)
	add(http.MethodGet, base+"/{id}/events", e.Events, decodeID, http.StatusOK)
	add(http.MethodGet, "/api/v1/session-settings", e.Settings, func(context.Context, *http.Request) (any, error) { return Empty{}, nil }, http.StatusOK)
	add(http.MethodPut, "/api/v1/session-settings", e.SetSettings, kitx.DecodeJSON[Settings](MaxJSONBody), http.StatusOK)
	add(http.MethodPut, "/api/v1/session-quotas/{user}", e.SetUserQuota, decodeUserQuota, http.StatusNoContent)
	return routes
}

func serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(openAPI)
}

var decodeNewSession = kitx.DecodeJSON[NewSession](MaxJSONBody)

func decodeCreate(ctx context.Context, r *http.Request) (any, error) {
	v, err := decodeNewSession(ctx, r)
	if err != nil {
		return nil, err
	}
	keys := r.Header.Values("Idempotency-Key")
	if len(keys) > 1 {
		return nil, apperr.Validation("invalid Idempotency-Key", apperr.Field("Idempotency-Key", "send at most one"))
	}
	key := ""
	if len(keys) == 1 {
		key = keys[0]
		if key == "" {
			return nil, apperr.Validation("invalid Idempotency-Key", apperr.Field("Idempotency-Key", "must not be empty"))
		}
	}
	return CreateRequest{Session: v.(NewSession), IdempotencyKey: key}, nil
}

func decodeList(_ context.Context, r *http.Request) (any, error) {
	v := r.URL.Query()
	q := Query{Owner: v.Get("owner"), Phase: Phase(v.Get("phase")), Tag: v.Get("tag"), Cursor: v.Get("cursor")}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n == 0 {
			return nil, apperr.Validation("invalid page size", apperr.Field("limit", "must be a positive integer"))
		}
		q.Limit = n
	}
	if s := v.Get("mine"); s != "" {
		b, err := strconv.ParseBool(s)
		if err != nil {
			return nil, apperr.Validation("invalid filter", apperr.Field("mine", "must be true or false"))
		}
		q.Mine = b
	}
	return ListRequest{Query: q}, nil
}

func decodeID(_ context.Context, r *http.Request) (any, error) {
	return IDRequest{ID: ID(r.PathValue("id"))}, nil
}

type tagsBody struct {
	Tags []string `json:"tags"`
}

var decodeTagsBody = kitx.DecodeJSON[tagsBody](MaxJSONBody)

func decodeTags(ctx context.Context, r *http.Request) (any, error) {
	v, err := decodeTagsBody(ctx, r)
	if err != nil {
		return nil, err
	}
	return TagsRequest{ID: ID(r.PathValue("id")), Tags: v.(tagsBody).Tags}, nil
}

var decodeQuota = kitx.DecodeJSON[Quota](MaxJSONBody)

func decodeUserQuota(ctx context.Context, r *http.Request) (any, error) {
	v, err := decodeQuota(ctx, r)
	if err != nil {
		return nil, err
	}
	return UserQuotaRequest{User: r.PathValue("user"), Quota: v.(Quota)}, nil
}

// WatchHandler serves the live stream: server-sent events, one "session" event with the
// session's JSON for each change the caller may see, a "deleted" event with its id when
// one of them is deleted, and a comment every heartbeat to keep proxies from closing the
// connection. The stream starts with the caller's current sessions.
//
// Visibility is decided twice, so a mistake in one place cannot leak: the hub admits only
// notices of the caller's tenant and (for members) the caller's own sessions, and every
// event is read through the service with the caller's rights. "?mine=true" limits an
// admin to their own sessions.
func WatchHandler(svc Service, hub *Hub, heartbeat time.Duration, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		p, _, err := caller(ctx, false)
		if err != nil {
			apperr.WriteHTTP(w, r.URL.Path, err)
			return
		}
		tid, ok := tenant.FromContext(ctx)
		if !ok {
			apperr.WriteHTTP(w, r.URL.Path, apperr.New(apperr.Unauthenticated, "authentication required"))
			return
		}
		mine := r.URL.Query().Get("mine") == "true"
		owner := p.Subject
		if isAdmin(p) && !mine {
			owner = ""
		}
		flusher, ok := w.(http.Flusher)
		if !ok {
			apperr.WriteHTTP(w, r.URL.Path, fmt.Errorf("sessions: response writer %T cannot flush", w))
			return
		}
		// Subscribe before reading the snapshot, so no change between the two is missed.
		sub := hub.Subscribe(tid, owner)
		defer sub.Close()
		first, err := svc.List(ctx, Query{Mine: mine, Limit: MaxLimit})
		if err != nil {
			apperr.WriteHTTP(w, r.URL.Path, err)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Accel-Buffering", "no")
		w.WriteHeader(http.StatusOK)
		seq := 0
		send := func(event string, v any) bool {
			b, err := json.Marshal(v)
			if err != nil {
				return false
			}
			seq++
			if _, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", seq, event, b); err != nil {
				return false
			}
			return true
		}
		// shown holds the sessions this stream has shown, so that a resync can tell the
		// client about those deleted while notices were lost.
		shown := map[ID]bool{}
		// show sends the current state of session id, or its deletion.
		show := func(id ID) bool {
			s, err := svc.Get(ctx, id)
			switch {
			case apperr.IsCode(err, apperr.NotFound):
				// The hub only admits the caller's own (or, for admins, the tenant's)
				// sessions, and shown only holds what the caller saw, so the id of one
				// that vanished is theirs.
				delete(shown, id)
				return send("deleted", map[string]ID{"id": id})
			case err != nil:
				logger.DebugContext(ctx, "live stream read failed", "session", id, "err", err)
				return true
			}
			shown[id] = true
			return send("session", s)
		}
		for _, s := range first.Items {
			shown[s.ID] = true
			if !send("session", s) {
				return
			}
		}
		flusher.Flush()
		tick := time.NewTicker(heartbeat)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
					return
				}
				flusher.Flush()
			case <-sub.Ready:
				changed, resync := sub.Take()
				seen := map[ID]bool{}
				if resync {
					// Notices may have been lost: show the newest page again, then every
					// session shown before that is not on it (deleted, or just older).
					page, err := svc.List(ctx, Query{Mine: mine, Limit: MaxLimit})
					if err != nil {
						logger.DebugContext(ctx, "live stream resync failed", "err", err)
					}
					for _, s := range page.Items {
						seen[s.ID], shown[s.ID] = true, true
						if !send("session", s) {
							return
						}
					}
					for id := range shown {
						changed = append(changed, id)
					}
				}
				for _, id := range changed {
					if seen[id] {
						continue
					}
					seen[id] = true
					if !show(id) {
						return
					}
				}
				flusher.Flush()
			}
		}
	})
}
