package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"
)

// proc is a subprocess the run started: one of the proxies. Each runs in
// its own process group and gets SIGKILL if the benchmark dies, so that no
// proxy outlives the run even on a crash; cleanup stops them in order.
type proc struct {
	name string
	env  []string
	bin  string
	args []string
	cmd  *exec.Cmd
	out  *os.File // stdout and stderr, in the temp dir
	done chan struct{}
}

// start runs bin with args as a named subprocess, its output going to
// a file in the temp dir. Children inherit the raised fd limit.
func (b *bench) start(name, bin string, args ...string) (*proc, error) {
	return b.startEnv(name, nil, bin, args...)
}

// startEnv is start with env added to the environment.
func (b *bench) startEnv(name string, env []string, bin string, args ...string) (*proc, error) {
	out, err := os.CreateTemp(b.tmp, name+"-*.log")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = out.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, env: env, bin: bin, args: args, cmd: cmd, out: out, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	b.mu.Lock()
	b.procs = append(b.procs, p)
	b.mu.Unlock()
	return p, nil
}

// restart stops t's proxy and starts it again with the same command line
// (and so the same ports), and waits until it forwards: the memory figures
// are taken on a fresh process, not on one whose heap, stacks and pipe
// pool earlier connections have grown.
func (b *bench) restart(ctx context.Context, t *target) error {
	old := t.proc
	old.stop()
	b.mu.Lock()
	b.procs = slices.DeleteFunc(b.procs, func(p *proc) bool { return p == old })
	b.mu.Unlock()
	p, err := b.startEnv(old.name, old.env, old.bin, old.args...)
	if err != nil {
		return err
	}
	t.proc = p
	return waitTarget(ctx, t)
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, then SIGKILL to the process group after 3s.
func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(3 * time.Second):
		_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
		<-p.done
	}
	_ = p.out.Close()
}

// logTail is the end of the process's output, for error messages.
func (p *proc) logTail() string {
	data, _ := os.ReadFile(p.out.Name())
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 10 {
		lines = lines[len(lines)-10:]
	}
	return strings.Join(lines, "\n")
}

// The /proc figures. A pid of 0 is the direct target, which has no proxy
// process: every figure is 0.

var clockTick = func() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		var hz float64
		if _, err := fmt.Sscan(string(out), &hz); err == nil && hz > 0 {
			return hz
		}
	}
	return 100
}()

// cpuTime is the process's user+system CPU time, all threads included
// (utime and stime of /proc/PID/stat).
func cpuTime(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name may hold spaces: fields start after the last ')'.
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	var ut, st float64
	fmt.Sscan(f[11], &ut)
	fmt.Sscan(f[12], &st)
	return time.Duration((ut + st) / clockTick * float64(time.Second))
}

// rssKiB is VmRSS from /proc/PID/status.
func rssKiB(pid int) float64 {
	if pid == 0 {
		return 0
	}
	return fieldKiB(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:")
}

// fdCount is the number of open descriptors of the process.
func fdCount(pid int) int {
	if pid == 0 {
		return 0
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0
	}
	return len(ents)
}

// kernelKiB is the kernel's own memory that grows with sockets and pipes:
// Slab + KernelStack + PageTables from /proc/meminfo. It is system-wide.
func kernelKiB() float64 {
	return fieldKiB("/proc/meminfo", "Slab:") + fieldKiB("/proc/meminfo", "KernelStack:") +
		fieldKiB("/proc/meminfo", "PageTables:")
}

func fieldKiB(path, name string) float64 {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, name); ok {
			var v float64
			fmt.Sscan(rest, &v)
			return v
		}
	}
	return 0
}
