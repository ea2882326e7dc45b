package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"time"
)

// agentExitPermanent is streamspace-agent's exit status for "retrying cannot help"
// (daemon.ExitPermanent; not imported, to keep client-go out of this binary).
const agentExitPermanent = 3

// agentBinary returns the streamspace-agent to run: explicit (--agent-bin), else the one
// next to this executable (a release ships both), else built from the checkout this runs
// in (`task dev` runs from one) into dataDir/bin. The Go build cache makes a rebuild cost
// a link.
func agentBinary(ctx context.Context, explicit, dataDir string, say func(string, ...any)) (string, error) {
	if explicit != "" {
		return explicit, nil
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "streamspace-agent")
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	root, err := workspaceRoot()
	if err != nil {
		return "", fmt.Errorf("no streamspace-agent binary: %w; pass --agent-bin, or run from a clone of the repository", err)
	}
	out := filepath.Join(dataDir, "bin", "streamspace-agent")
	say("building the agent (go build ./agent/cmd/streamspace-agent) into %s", out)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./agent/cmd/streamspace-agent")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the agent: %v\n%s", err, b)
	}
	return out, nil
}

// workspaceRoot finds the directory holding go.work and agent/, from the working
// directory up.
func workspaceRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			if _, err := os.Stat(filepath.Join(dir, "agent", "cmd", "streamspace-agent")); err == nil {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("the working directory is not inside a StreamSpace checkout")
		}
		dir = parent
	}
}

// agentProc is the supervised agent child.
type agentProc struct {
	// gaveUp finishes when the supervisor gave up (a permanent failure).
	gaveUp *exit
	quit   chan time.Duration
	done   chan struct{}
}

// superviseAgent runs bin with args, restarting it with backoff when it exits, except
// on a permanent failure (exit status 3) or stop. Its output goes to out.
//
// One goroutine, locked to its OS thread, starts and waits for every child: Pdeathsig
// is tied to the thread that forked the child, so the lock keeps the runtime from
// retiring that thread under a live agent, and the agent dies with this process even
// when it is killed. The child has its own process group, so a Ctrl-C in the terminal
// reaches only us and we stop it in order.
func superviseAgent(bin string, args []string, out io.Writer, say func(string, ...any)) *agentProc {
	p := &agentProc{gaveUp: newExit(), quit: make(chan time.Duration, 1), done: make(chan struct{})}
	go func() {
		runtime.LockOSThread() // never unlocked: see above
		defer close(p.done)
		delay := time.Second
		for {
			cmd := exec.Command(bin, args...)
			cmd.Stdout, cmd.Stderr = out, out
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
			started := time.Now()
			if err := cmd.Start(); err != nil {
				p.gaveUp.finish(err)
				return
			}
			waited := make(chan error, 1)
			go func() { waited <- cmd.Wait() }()
			var err error
			select {
			case err = <-waited:
			case grace := <-p.quit:
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
				select {
				case <-waited:
				case <-time.After(grace):
					say("the demo agent did not stop within %v; killing it", grace)
					_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
					<-waited
				}
				return
			}
			var exit *exec.ExitError
			if errors.As(err, &exit) && exit.ExitCode() == agentExitPermanent {
				say("the demo agent gave up (%v): it cannot recover on its own; see its log above", err)
				p.gaveUp.finish(err)
				return
			}
			if time.Since(started) > time.Minute {
				delay = time.Second
			}
			say("the demo agent exited (%v); restarting it in %v", err, delay)
			select {
			case <-time.After(delay):
			case <-p.quit:
				return
			}
			delay = min(2*delay, 30*time.Second)
		}
	}()
	return p
}

// stop asks the agent to drain (SIGTERM), kills it after grace, and waits.
func (p *agentProc) stop(grace time.Duration) {
	select {
	case p.quit <- grace:
	default:
	}
	<-p.done
}
