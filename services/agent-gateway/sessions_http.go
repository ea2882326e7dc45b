package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"streamspace.dev/libs/apperr"
)

// tokenKey carries the caller's Authorization header from the stream endpoint to
// NewHTTPSessions, which asks the sessions service as the caller.
type tokenKey struct{}

func withToken(ctx context.Context, authorization string) context.Context {
	return context.WithValue(ctx, tokenKey{}, authorization)
}

// NewHTTPSessions finds sessions at the sessions service's GET /api/v1/sessions/{id},
// for a gateway running apart from it. It asks with the caller's own token, so the
// sessions service decides what the caller may see, exactly as for its own API.
func NewHTTPSessions(baseURL string, client *http.Client) SessionFinder {
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	base := strings.TrimRight(baseURL, "/") + "/api/v1/sessions/"
	return SessionFinderFunc(func(ctx context.Context, id SessionID) (StreamTarget, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+url.PathEscape(string(id)), nil)
		if err != nil {
			return StreamTarget{}, err
		}
		if a, _ := ctx.Value(tokenKey{}).(string); a != "" {
			req.Header.Set("Authorization", a)
		}
		resp, err := client.Do(req)
		if err != nil {
			return StreamTarget{}, apperr.Wrap(err, apperr.Unavailable, "the sessions service is unreachable")
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return StreamTarget{}, apperr.FromResponse(resp)
		}
		var s struct {
			AgentID  AgentID `json:"agent_id"`
			Phase    string  `json:"phase"`
			Endpoint *struct {
				Port int `json:"port"`
			} `json:"endpoint"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(nil, resp.Body, 1<<20)).Decode(&s); err != nil {
			return StreamTarget{}, fmt.Errorf("decoding the sessions service's answer: %w", err)
		}
		t := StreamTarget{Agent: s.AgentID, Phase: s.Phase}
		if s.Endpoint != nil {
			t.Port = s.Endpoint.Port
		}
		return t, nil
	})
}
