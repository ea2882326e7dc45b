package enroll

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"time"

	"streamspace.dev/libs/wire"
)

// Source says where the agent's credential may come from, in order of preference.
type Source struct {
	// Store is the state directory; a credential saved there (by enrollment or renewal)
	// is reused.
	Store Store
	// CertFile and KeyFile name a mounted certificate and key (a Kubernetes Secret). A
	// newer renewal of the same agent in Store wins over them, because the agent cannot
	// write the Secret back.
	CertFile, KeyFile string
	// Token is a one-time enrollment token, used only when nothing else is usable.
	Token string
	// Client calls the enrollment endpoint; required with Token.
	Client *Client
	// Name labels the CSR.
	Name string
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Log receives one line saying where the credential came from.
	Log *slog.Logger
}

// ErrNoCredential says the agent has neither a usable certificate nor a token: only an
// operator can fix that, so it is permanent.
var ErrNoCredential = &wire.Error{Code: wire.CodeUnauthenticated, Permanent: true,
	Message: "no usable agent certificate and no enrollment token: set --token (or --token-file), or --cert-file and --key-file"}

// Obtain returns the credential to use, enrolling with the token if needed. Enrollment
// errors keep their retry policy (see Client.Enroll), so the caller can retry with
// backoff exactly as it does for the tunnel.
func Obtain(ctx context.Context, s Source) (*Credential, error) {
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	log := s.Log
	if log == nil {
		log = slog.Default()
	}
	stored, err := s.Store.Load()
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		// A damaged file must not silently trigger a re-enrollment with a token that
		// may be gone; the operator has to look.
		return nil, &wire.Error{Code: wire.CodePreconditionFailed, Permanent: true, Message: err.Error()}
	}
	var c *Credential
	origin := ""
	if s.CertFile != "" {
		mounted, err := LoadFiles(s.CertFile, s.KeyFile)
		if err != nil {
			return nil, &wire.Error{Code: wire.CodePreconditionFailed, Permanent: true, Message: err.Error()}
		}
		c, origin = mounted, "mounted files"
		if stored != nil && stored.Agent == mounted.Agent && stored.Leaf().NotAfter.After(mounted.Leaf().NotAfter) {
			c, origin = stored, "state directory (renewed after the mounted certificate)"
		}
	} else if stored != nil {
		c, origin = stored, "state directory"
	}
	if c != nil && now().Before(c.Leaf().NotAfter) {
		log.InfoContext(ctx, "using agent certificate", "from", origin, "agent", c.Agent, "tenant", c.Tenant,
			"not_after", c.Leaf().NotAfter, "renew_at", c.RenewAt())
		return c, nil
	}
	if s.Token == "" {
		if c != nil {
			return nil, &wire.Error{Code: wire.CodeUnauthenticated, Permanent: true,
				Message: fmt.Sprintf("agent certificate from %s expired at %s; enroll again with a new token", origin, c.Leaf().NotAfter)}
		}
		return nil, ErrNoCredential
	}
	if s.Client == nil || s.Client.URL == "" {
		return nil, &wire.Error{Code: wire.CodeInvalid, Permanent: true, Message: "an enrollment token needs an enrollment URL"}
	}
	cred, ca, err := s.Client.Enroll(ctx, s.Token, s.Name)
	if err != nil {
		return nil, err
	}
	// Save before anything uses it: a certificate we lose after the one-time token is
	// spent would leave the agent unable to connect.
	if len(ca) > 0 {
		if err := s.Store.SaveCA(ca); err != nil {
			return nil, err
		}
	}
	if err := s.Store.Save(cred); err != nil {
		return nil, err
	}
	log.InfoContext(ctx, "enrolled", "agent", cred.Agent, "tenant", cred.Tenant, "not_after", cred.Leaf().NotAfter)
	return cred, nil
}
