package kube

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"streamspace.dev/e2e/netns"
)

// proc is one running control-plane process.
type proc struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	err     error         // exit status, valid after done
}

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, waits up to grace, then SIGKILLs
// the group and waits for the exit.
func (p *proc) stop(grace time.Duration) {
	if p == nil || p.exited() {
		return
	}
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
	// Anything the process left behind in its group.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}

// spawner starts processes from one goroutine locked to its OS thread for the
// cluster's lifetime. Children get PR_SET_PDEATHSIG=SIGKILL, which Linux ties
// to the *thread* that forked them; pinning the thread keeps the Go runtime
// from retiring it under a live child, and guarantees the children die with
// the test binary even when it is SIGKILLed or times out without cleanup.
type spawner struct {
	reqs chan spawnReq
	quit chan struct{}
}

type spawnReq struct {
	cmd   *exec.Cmd
	reply chan error
}

// newSpawner starts the spawning thread, inside network namespace ns when
// not empty: children are born in their parent thread's namespace.
func newSpawner(ns string) (*spawner, error) {
	s := &spawner{reqs: make(chan spawnReq), quit: make(chan struct{})}
	ready := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Deliberately never unlocked: when the goroutine ends, its thread
		// exits, and only then (after every child has been stopped) do the
		// death signals fire. That also keeps a thread moved into ns from
		// ever running another goroutine.
		if ns != "" {
			if err := netns.Enter(ns); err != nil {
				ready <- fmt.Errorf("kube: %w", err)
				return
			}
		}
		ready <- nil
		for {
			select {
			case r := <-s.reqs:
				r.reply <- r.cmd.Start()
			case <-s.quit:
				return
			}
		}
	}()
	if err := <-ready; err != nil {
		return nil, err
	}
	return s, nil
}

func (s *spawner) start(cmd *exec.Cmd) error {
	reply := make(chan error, 1)
	select {
	case s.reqs <- spawnReq{cmd: cmd, reply: reply}:
		return <-reply
	case <-s.quit:
		return errors.New("kube: cluster stopped")
	}
}

func (s *spawner) close() { close(s.quit) }

// startProc starts bin with args, in its own process group, logging stdout
// and stderr (appended, so restarts accumulate) to dir/<name>.log.
func (c *Cluster) startProc(name, bin string, args []string, env []string) (*proc, error) {
	logPath := filepath.Join(c.dir, "logs", name+".log")
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(logf, "=== %s %s %s\n", time.Now().Format(time.RFC3339Nano), bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Dir = filepath.Join(c.dir, name)
	if err := os.MkdirAll(cmd.Dir, 0o755); err != nil {
		logf.Close()
		return nil, err
	}
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.spawn.start(cmd); err != nil {
		logf.Close()
		return nil, fmt.Errorf("kube: start %s: %w", name, err)
	}
	p := &proc{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// tail returns the last n bytes of a log file, for error messages.
func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := st.Size() - n
	if off < 0 {
		off = 0
	}
	buf := make([]byte, st.Size()-off)
	_, _ = f.ReadAt(buf, off)
	if off > 0 {
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			buf = buf[i+1:]
		}
	}
	return string(buf)
}

// pids returns the process ids of the running processes, by name.
func (c *Cluster) pids() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := map[string]int{}
	for n, p := range c.procs {
		if !p.exited() {
			m[n] = p.cmd.Process.Pid
		}
	}
	return m
}
