package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
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
	// pidns: the first process of a PID namespace of its own (startTree)
	pidns bool
	cmd   *exec.Cmd
	out   *os.File // stdout and stderr, in the temp dir
	done  chan struct{}
}

// start runs bin with args as a named subprocess, its output going to
// a file in the temp dir. Children inherit the raised fd limit.
func (b *bench) start(name, bin string, args ...string) (*proc, error) {
	return b.startEnv(name, nil, bin, args...)
}

// startEnv is start with env added to the environment.
func (b *bench) startEnv(name string, env []string, bin string, args ...string) (*proc, error) {
	return b.startProc(&proc{name: name, env: env, bin: bin, args: args})
}

// startTree is start for a proxy that forks workers (nginx): it runs as the
// first process of a PID namespace of its own where the system allows one,
// so that when it dies (SIGKILL included, from Pdeathsig when the
// benchmark crashes) the kernel kills its workers too. Without a
// namespace, stop still kills the whole process group.
func (b *bench) startTree(name, bin string, args ...string) (*proc, error) {
	p, err := b.startProc(&proc{name: name, bin: bin, args: args, pidns: true})
	if err != nil {
		p, err = b.startProc(&proc{name: name, bin: bin, args: args})
	}
	return p, err
}

// startProc starts the command p describes and fills in the rest of p.
func (b *bench) startProc(p *proc) (*proc, error) {
	out, err := os.CreateTemp(b.tmp, p.name+"-*.log")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if p.pidns {
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWPID
	}
	if err := cmd.Start(); err != nil {
		_ = out.Close()
		_ = os.Remove(out.Name())
		return nil, fmt.Errorf("start %s: %w", p.name, err)
	}
	p.cmd, p.out, p.done = cmd, out, make(chan struct{})
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
	p, err := b.startProc(&proc{name: old.name, env: old.env, bin: old.bin, args: old.args, pidns: old.pidns})
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
// process: every figure is 0. Each figure is summed over the process and
// its descendants (nginx's master and workers), so a proxy that forks is
// measured whole; for the proxies that do not fork (docker-proxy, HAProxy
// with -db, the bare Go proxy) the tree is the one process and the figure
// is that process's own.

// tree is pid and its descendants, from /proc/PID/task/TID/children (the
// children each thread forked), parents first.
func tree(pid int) []int {
	if pid == 0 {
		return nil
	}
	pids := []int{pid}
	for i := 0; i < len(pids) && i < 1000; i++ {
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pids[i]))
		for _, tk := range tasks {
			data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pids[i], tk.Name()))
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(data)) {
				if c, err := strconv.Atoi(f); err == nil {
					pids = append(pids, c)
				}
			}
		}
	}
	return pids
}

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

// cpuTime is the user+system CPU time of pid's tree, all threads included:
// utime and stime of /proc/PID/stat of each process, plus cutime and
// cstime, the time of children that ended and were waited for (a worker
// that exited during a window still counts; a process that never forks
// has none).
func cpuTime(pid int) time.Duration {
	var ticks float64
	for _, p := range tree(pid) {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		// The command name may hold spaces: fields start after the last ')'.
		f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
		if len(f) < 15 {
			continue
		}
		for _, k := range f[11:15] { // utime stime cutime cstime
			var v float64
			fmt.Sscan(k, &v)
			ticks += v
		}
	}
	return time.Duration(ticks / clockTick * float64(time.Second))
}

// rssKiB is VmRSS from /proc/PID/status, summed over pid's tree. Pages the
// processes share (nginx's workers and master after fork) count once per
// process; the table's figures are growths, which are the workers' own.
func rssKiB(pid int) float64 {
	var kib float64
	for _, p := range tree(pid) {
		kib += fieldKiB(fmt.Sprintf("/proc/%d/status", p), "VmRSS:")
	}
	return kib
}

// fdCount is the number of open descriptors of pid's tree (a descriptor
// that several of its processes hold, such as nginx's listeners, counts
// once per process).
func fdCount(pid int) int {
	n := 0
	for _, p := range tree(pid) {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p))
		if err == nil {
			n += len(ents)
		}
	}
	return n
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
