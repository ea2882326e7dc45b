// Package pgtest gives each test a fresh, migrated PostgreSQL database.
//
// The first test in a process finds a server, in this order:
//
//  1. STREAMSPACE_TEST_DATABASE_URL, when set (a superuser's URL);
//  2. a server on 127.0.0.1:5432 that accepts user postgres;
//  3. a PostgreSQL container from testcontainers-go, when a Docker daemon answers;
//  4. a private cluster started from the machine's PostgreSQL binaries (package pgserver),
//     kept in the user's cache folder and shared by every test process.
//
// If none works the test fails, saying how to provide one. It never skips.
//
// Migrations run once per distinct Template into a template database; each test then gets
// `CREATE DATABASE … TEMPLATE …`, a file-level copy that takes tens of milliseconds, and
// drops it when it ends.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"

	"streamspace.dev/libs/pgserver"
)

// EnvURL names the variable that points tests at a server of your choice.
const EnvURL = "STREAMSPACE_TEST_DATABASE_URL"

// Template describes a migrated database that tests clone.
type Template struct {
	// Name is a short identifier, [a-z0-9_], e.g. "platform".
	Name string
	// Hash changes whenever the migrations change, so a stale template is never reused.
	Hash string
	// Migrate brings the empty database at url to the wanted state.
	Migrate func(ctx context.Context, url string) error
}

var (
	serverOnce sync.Once
	serverURL  string
	serverErr  error
	serverFrom string
)

// ServerURL returns the superuser URL of the test server (database postgres), finding or
// starting one on first use.
func ServerURL(t testing.TB) string {
	t.Helper()
	serverOnce.Do(func() { serverURL, serverFrom, serverErr = findServer() })
	if serverErr != nil {
		t.Fatalf("pgtest: no PostgreSQL server for tests: %v\n"+
			"Provide one of:\n"+
			"  - %s=postgres://USER@HOST:PORT/postgres (a superuser)\n"+
			"  - a server on 127.0.0.1:5432 with trust auth for user postgres "+
			"(`pg_ctlcluster --skip-systemctl-redirect 15 main start`)\n"+
			"  - a Docker daemon, for testcontainers-go\n"+
			"  - PostgreSQL server binaries for a private cluster (`apt-get install -y postgresql`)",
			serverErr, EnvURL)
	}
	return serverURL
}

// Source says where the test server came from (for logs).
func Source() string { return serverFrom }

func findServer() (dsn, from string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var errs []error
	if u := os.Getenv(EnvURL); u != "" {
		if err := ping(ctx, u); err != nil {
			// An explicit choice that fails is an error, not a reason to look elsewhere.
			return "", "", fmt.Errorf("%s is set but unusable: %w", EnvURL, err)
		}
		return u, EnvURL, nil
	}
	const local = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	if err := ping(ctx, local); err == nil {
		return local, "127.0.0.1:5432", nil
	} else {
		errs = append(errs, fmt.Errorf("127.0.0.1:5432: %w", err))
	}
	if dockerAnswers() {
		u, err := startContainer(ctx)
		if err == nil {
			return u, "testcontainers", nil
		}
		errs = append(errs, fmt.Errorf("testcontainers: %w", err))
	} else {
		errs = append(errs, errors.New("testcontainers: no Docker daemon"))
	}
	u, err := startPrivate(ctx)
	if err == nil {
		return u, "private cluster", nil
	}
	errs = append(errs, fmt.Errorf("private cluster: %w", err))
	return "", "", errors.Join(errs...)
}

func ping(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.Ping(ctx)
}

// dockerAnswers checks for a daemon socket before asking testcontainers, whose own probe
// is slow to give up.
func dockerAnswers() bool {
	if h := os.Getenv("DOCKER_HOST"); h != "" {
		return true
	}
	_, err := os.Stat("/var/run/docker.sock")
	return err == nil
}

func startContainer(ctx context.Context) (string, error) {
	c, err := tcpostgres.Run(ctx, "postgres:15-alpine",
		tcpostgres.WithUsername("postgres"), tcpostgres.WithPassword("postgres"),
		tcpostgres.WithDatabase("postgres"), tcpostgres.BasicWaitStrategies())
	if err != nil {
		return "", err
	}
	// The Ryuk reaper removes the container when this process exits.
	return c.ConnectionString(ctx, "sslmode=disable")
}

func startPrivate(ctx context.Context) (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "streamspace", "pgtest")
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", err
	}
	// Test binaries of several packages run at once; one of them starts the cluster.
	lock, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", err
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	s, err := pgserver.Start(ctx, pgserver.Options{Dir: dir})
	if err != nil {
		return "", err
	}
	return s.URL("postgres"), nil
}

// NewDatabase returns the URL of a fresh database cloned from tmpl, dropped when the test
// ends.
func NewDatabase(t testing.TB, tmpl Template) string {
	t.Helper()
	admin := ServerURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tmplName, err := ensureTemplate(ctx, admin, tmpl)
	if err != nil {
		t.Fatalf("pgtest: building template %q: %v", tmpl.Name, err)
	}
	name := scratchName("sstest_")
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	defer conn.Close(ctx)
	sweepOnce.Do(func() { sweep(ctx, conn, time.Now()) })
	clone := func() error {
		_, err := conn.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s",
			pgx.Identifier{name}.Sanitize(), pgx.Identifier{tmplName}.Sanitize()))
		return err
	}
	if err := clone(); err != nil {
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "3D000" {
			t.Fatalf("pgtest: cloning %s: %v", tmplName, err)
		}
		// Another process pruned the template since this one built it: build it again.
		forgetTemplate(tmplName)
		if tmplName, err = ensureTemplate(ctx, admin, tmpl); err != nil {
			t.Fatalf("pgtest: rebuilding template %q: %v", tmpl.Name, err)
		}
		if err := clone(); err != nil {
			t.Fatalf("pgtest: cloning %s: %v", tmplName, err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			t.Errorf("pgtest: dropping %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", pgx.Identifier{name}.Sanitize())); err != nil {
			t.Errorf("pgtest: dropping %s: %v", name, err)
		}
	})
	return WithDatabase(admin, name)
}

var (
	templatesMu sync.Mutex
	templates   = map[string]bool{}
)

// keepTemplates is how many template databases of one name survive on a server.
const keepTemplates = 5

func forgetTemplate(name string) {
	templatesMu.Lock()
	delete(templates, name)
	templatesMu.Unlock()
}

// ensureTemplate builds the template database once per server. Test processes race for it,
// so the build runs under an advisory lock and is published by an atomic rename.
func ensureTemplate(ctx context.Context, admin string, tmpl Template) (string, error) {
	if tmpl.Name == "" || strings.Trim(tmpl.Name, "abcdefghijklmnopqrstuvwxyz0123456789_") != "" {
		return "", fmt.Errorf("template name %q must be [a-z0-9_]+", tmpl.Name)
	}
	hash := tmpl.Hash
	if len(hash) > 16 {
		hash = hash[:16]
	}
	name := "sstmpl_" + tmpl.Name + "_" + hash
	if len(name) > 63 {
		return "", fmt.Errorf("template database name %q is too long", name)
	}
	templatesMu.Lock()
	defer templatesMu.Unlock()
	if templates[name] {
		return name, nil
	}
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock(hashtext('streamspace.pgtest.template'))"); err != nil {
		return "", err
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(hashtext('streamspace.pgtest.template'))")
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return "", err
	}
	if !exists {
		building := scratchName("sstmpl_building_")
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{building}.Sanitize()); err != nil {
			return "", err
		}
		drop := func() {
			_, _ = conn.Exec(context.WithoutCancel(ctx), "DROP DATABASE IF EXISTS "+pgx.Identifier{building}.Sanitize()+" WITH (FORCE)")
		}
		if tmpl.Migrate != nil {
			if err := tmpl.Migrate(ctx, WithDatabase(admin, building)); err != nil {
				drop()
				return "", fmt.Errorf("migrating: %w", err)
			}
		}
		// Migrations may leave pooled connections behind; a template must have none.
		if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER DATABASE %s RENAME TO %s",
			pgx.Identifier{building}.Sanitize(), pgx.Identifier{name}.Sanitize())); err != nil {
			drop()
			return "", fmt.Errorf("publishing template: %w", err)
		}
		// Templates of older migration sets are dead weight, but another checkout on this
		// server (a second work tree, a CI run) may still be using one: keep the newest few.
		rows, err := conn.Query(ctx, `SELECT datname FROM pg_database WHERE datname LIKE $1
			ORDER BY oid DESC OFFSET $2`, "sstmpl\\_"+tmpl.Name+"\\_%", keepTemplates)
		if err == nil {
			old, _ := pgx.CollectRows(rows, pgx.RowTo[string])
			for _, o := range old {
				_, _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{o}.Sanitize())
			}
		}
	}
	templates[name] = true
	return name, nil
}

// sweepAge is how old a scratch database must be before a later test process drops it as
// left behind by a crashed or killed run: well beyond any test binary's timeout, so a
// database still in use is never a candidate (and DROP without FORCE spares one that has
// connections anyway).
const sweepAge = 3 * time.Hour

var sweepOnce sync.Once

// scratchName returns a database name that carries its creation time, prefix +
// unix seconds in hex + random, so that sweep can tell its age from the name alone
// (PostgreSQL records no creation time for a database).
func scratchName(prefix string) string {
	return fmt.Sprintf("%s%x_%s", prefix, time.Now().Unix(), randomHex(6))
}

// sweep drops the scratch databases (test clones, half-built templates) that test runs
// which never reached their cleanup left on the server, once per process. Best effort:
// a failure only leaves them for the next run.
func sweep(ctx context.Context, conn *pgx.Conn, now time.Time) {
	rows, err := conn.Query(ctx, `SELECT datname FROM pg_database
		WHERE datname LIKE 'sstest\_%' OR datname LIKE 'sstmpl\_building\_%'`)
	if err != nil {
		return
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return
	}
	for _, n := range names {
		if born, ok := scratchBorn(n); ok && now.Sub(born) > sweepAge {
			_, _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{n}.Sanitize())
		}
	}
}

// scratchBorn reads the creation time scratchName put in name; ok is false for names
// of another shape (older runs' names carry no time and are left alone).
func scratchBorn(name string) (time.Time, bool) {
	for _, p := range []string{"sstest_", "sstmpl_building_"} {
		if rest, ok := strings.CutPrefix(name, p); ok {
			hexTime, _, ok := strings.Cut(rest, "_")
			if !ok {
				return time.Time{}, false
			}
			sec, err := strconv.ParseInt(hexTime, 16, 64)
			if err != nil {
				return time.Time{}, false
			}
			return time.Unix(sec, 0), true
		}
	}
	return time.Time{}, false
}

// WithDatabase returns the URL u with its database replaced by db.
func WithDatabase(u, db string) string {
	parsed, err := url.Parse(u)
	if err != nil {
		return u
	}
	parsed.Path = "/" + db
	return parsed.String()
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
