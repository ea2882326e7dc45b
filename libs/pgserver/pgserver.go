// Package pgserver starts a private PostgreSQL cluster from the machine's PostgreSQL
// binaries: for `streamspace dev` on a laptop and for tests on a machine with no server.
//
// The cluster lives in a directory of its own and survives the process: a second Start on
// the same directory finds it running and reuses it, so repeated runs cost milliseconds.
// It listens on 127.0.0.1 only, with trust authentication, and never on a Unix socket
// (socket paths have a 107-byte limit that deep project folders exceed).
package pgserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Options configure Start.
type Options struct {
	// Dir holds the cluster: data/ for PostgreSQL's files, server.log, and port.
	Dir string
	// Port to listen on; 0 keeps the port the cluster used before, or picks a free one.
	Port int
}

// Server is a running private cluster.
type Server struct {
	Dir  string
	Port int
	bin  string
}

// URL returns a connection string for database db as the superuser postgres.
func (s *Server) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.Port, db)
}

// ErrNoBinaries means no PostgreSQL server binaries were found on this machine.
var ErrNoBinaries = errors.New("no PostgreSQL server binaries (initdb, pg_ctl) found: install them, e.g. `apt-get install -y postgresql`")

// Binaries returns the directory holding initdb and pg_ctl: $PG_BINDIR, then the newest
// /usr/lib/postgresql/*/bin, then PATH.
func Binaries() (string, error) {
	var candidates []string
	if d := os.Getenv("PG_BINDIR"); d != "" {
		candidates = append(candidates, d)
	}
	versions, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(versions, func(i, j int) bool { return versionOf(versions[i]) > versionOf(versions[j]) })
	candidates = append(candidates, versions...)
	if p, err := exec.LookPath("initdb"); err == nil {
		candidates = append(candidates, filepath.Dir(p))
	}
	for _, d := range candidates {
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "pg_ctl")) {
			return d, nil
		}
	}
	return "", ErrNoBinaries
}

func versionOf(bindir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(bindir)))
	return n
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// Start initialises the cluster in opts.Dir if needed and starts it unless it already runs.
// Callers that may race (parallel test processes) serialise on a lock of their own.
func Start(ctx context.Context, opts Options) (*Server, error) {
	bin, err := Binaries()
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	s := &Server{Dir: dir, bin: bin}
	data := s.data()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dir, err)
	}
	asPostgres, err := needsPostgresUser()
	if err != nil {
		return nil, err
	}
	if asPostgres {
		// initdb refuses to run as root; the cluster belongs to the postgres user, who must
		// be able to reach the directory.
		if err := chownPostgres(dir); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(filepath.Join(data, "PG_VERSION")); err != nil {
		if err := s.run(ctx, asPostgres, "initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"); err != nil {
			return nil, fmt.Errorf("initdb: %w", err)
		}
	}
	if s.running(ctx, asPostgres) {
		port, err := s.readPort()
		if err == nil && reachable(port) {
			s.Port = port
			return s, nil
		}
	}
	port := opts.Port
	if port == 0 {
		if p, err := s.readPort(); err == nil && !reachable(p) {
			port = p
		} else if port, err = freePort(); err != nil {
			return nil, err
		}
	}
	s.Port = port
	if err := os.WriteFile(filepath.Join(dir, "port"), []byte(strconv.Itoa(port)), 0o644); err != nil {
		return nil, err
	}
	// Settings go on the command line, not in postgresql.conf, so a changed port never
	// needs the configuration rewritten. fsync off: this cluster holds development and
	// test data only.
	serverOpts := fmt.Sprintf("-p %d -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300", port)
	if err := s.run(ctx, asPostgres, "pg_ctl", "-D", data, "-l", filepath.Join(dir, "server.log"), "-o", serverOpts, "-w", "-t", "60", "start"); err != nil {
		return nil, fmt.Errorf("starting PostgreSQL (log: %s): %w", filepath.Join(dir, "server.log"), err)
	}
	return s, nil
}

// Stop stops the cluster, waiting for it to shut down.
func (s *Server) Stop(ctx context.Context) error {
	asPostgres, err := needsPostgresUser()
	if err != nil {
		return err
	}
	return s.run(ctx, asPostgres, "pg_ctl", "-D", s.data(), "-m", "fast", "-w", "stop")
}

func (s *Server) data() string { return filepath.Join(s.Dir, "data") }

func (s *Server) readPort() (int, error) {
	b, err := os.ReadFile(filepath.Join(s.Dir, "port"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func (s *Server) running(ctx context.Context, asPostgres bool) bool {
	return s.run(ctx, asPostgres, "pg_ctl", "-D", s.data(), "status") == nil
}

func (s *Server) run(ctx context.Context, asPostgres bool, tool string, args ...string) error {
	path := filepath.Join(s.bin, tool)
	var cmd *exec.Cmd
	if asPostgres {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, path, args...)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// pg_ctl's postmaster must outlive us, and not die with our process group on Ctrl-C.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", tool, err, strings.TrimSpace(out.String()))
	}
	return nil
}

func needsPostgresUser() (bool, error) {
	if os.Geteuid() != 0 {
		return false, nil
	}
	if _, err := user.Lookup("postgres"); err != nil {
		return false, errors.New("running as root, and PostgreSQL refuses to run as root: create a `postgres` user (the postgresql package does) or run as another user")
	}
	if _, err := exec.LookPath("runuser"); err != nil {
		return false, errors.New("running as root needs `runuser` (util-linux) to start PostgreSQL as the postgres user")
	}
	return true, nil
}

// chownPostgres gives dir to the postgres user and makes each ancestor traversable.
func chownPostgres(dir string) error {
	u, err := user.Lookup("postgres")
	if err != nil {
		return err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		return fmt.Errorf("chown %s: %w", dir, err)
	}
	for d := filepath.Dir(dir); d != "/" && d != "."; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(d, fi.Mode().Perm()|0o001); err != nil {
				return fmt.Errorf("making %s traversable for postgres: %w", d, err)
			}
		}
	}
	return nil
}

func reachable(port int) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 500*time.Millisecond)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// StopDir stops the cluster kept in dir, if it runs. `task clean` and tests use it.
func StopDir(ctx context.Context, dir string) error {
	bin, err := Binaries()
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	s := &Server{Dir: abs, bin: bin}
	asPostgres, err := needsPostgresUser()
	if err != nil {
		return err
	}
	if !s.running(ctx, asPostgres) {
		return nil
	}
	return s.Stop(ctx)
}
