package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// profile shows where the proxies spend their time, in a run of its own
// (tracing distorts what it watches, so it never runs with the table):
// strace -c of docker-proxy over a bulk transfer, to confirm that splice
// moves the bytes; then, for every proxy (all its processes: nginx's
// master and workers), strace -c over a connection-rate run (system calls
// per connection) and perf over another (kernel against user time, and
// docker-proxy's hottest symbols), where perf works.
func (b *bench) profile(ctx context.Context, dp *target) {
	fmt.Println()
	_, errStrace := exec.LookPath("strace")
	_, errPerf := exec.LookPath("perf")
	if errStrace != nil {
		fmt.Println("   strace is not installed (apt-get install -y strace): no system call counts")
	} else {
		step("strace -f -c docker-proxy (pid %d): 1 stream up 1.5s, then down 1.5s", dp.pid())
		out := traced(ctx, []string{"strace", "-f", "-c", "-p", fmt.Sprint(dp.pid())}, func() {
			_, _ = runBulk(ctx, dp.sink, 1, true, 0, 1500*time.Millisecond, 0)
			_, _ = runBulk(ctx, dp.source, 1, false, 0, 1500*time.Millisecond, 0)
		})
		fmt.Println(top(from(out, "% time"), 16))
	}
	for _, t := range b.targets {
		if t.proc == nil || ctx.Err() != nil {
			continue
		}
		if errStrace == nil {
			step("strace -f -c %s (pid %s): connection rate for 2s", t.name, treePids(t.pid()))
			var r rateResult
			argv := []string{"strace", "-f", "-c"}
			for _, p := range tree(t.pid()) {
				argv = append(argv, "-p", fmt.Sprint(p))
			}
			out := traced(ctx, argv, func() {
				r, _ = runRate(ctx, t.echo, 2*time.Second, 0)
			})
			out = from(out, "% time")
			fmt.Println(top(out, 12))
			if calls := totalCalls(out); r.ok > 0 && calls > 0 {
				fmt.Printf("   %d connections in the window: about %.0f system calls per connection\n", r.ok, float64(calls)/float64(r.ok))
			}
		}
		if errPerf == nil {
			b.perf(ctx, t)
		}
	}
}

// perf samples t during a connection-rate run and prints kernel against
// user time, and for docker-proxy the hottest symbols.
func (b *bench) perf(ctx context.Context, t *target) {
	pids := treePids(t.pid())
	step("perf record %s (pid %s): connection rate for 3s", t.name, pids)
	data := filepath.Join(b.tmp, "perf-"+t.name+".data")
	out := traced(ctx, []string{"perf", "record", "-F", "999", "-g", "-o", data, "-p", pids}, func() {
		_, _ = runRate(ctx, t.echo, 3*time.Second, 0)
	})
	dso, err := exec.CommandContext(ctx, "perf", "report", "-i", data, "--stdio", "--no-children",
		"--sort", "dso", "-g", "none").CombinedOutput()
	if err != nil {
		fmt.Printf("   perf did not work here: %v\n%s\n", err, top(out, 5))
		return
	}
	fmt.Println(top(string(dso), 6))
	if t.name != tDP {
		return
	}
	sym, err := exec.CommandContext(ctx, "perf", "report", "-i", data, "--stdio", "--no-children",
		"--sort", "dso,symbol", "-g", "none", "--percent-limit", "0.7").CombinedOutput()
	if err == nil {
		fmt.Println(top(string(sym), 30))
	}
}

// treePids is pid and its descendants (nginx's workers), comma-separated:
// the proxy whole, for strace and perf.
func treePids(pid int) string {
	var s []string
	for _, p := range tree(pid) {
		s = append(s, fmt.Sprint(p))
	}
	return strings.Join(s, ",")
}

// traced runs load while the tracer watches, then stops the tracer with
// SIGINT and returns what it printed.
func traced(ctx context.Context, argv []string, load func()) string {
	var buf strings.Builder
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = &buf, &buf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err.Error()
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	_ = sleepCtx(ctx, 500*time.Millisecond) // let it attach
	load()
	_ = cmd.Process.Signal(os.Interrupt)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	return buf.String()
}

// totalCalls is the calls column of strace -c's total line.
func totalCalls(out string) int {
	for line := range strings.SplitSeq(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[len(f)-1] == "total" {
			var n int
			fmt.Sscan(f[3], &n)
			return n
		}
	}
	return 0
}

// top is the first n lines of s that say something.
func top(s string, n int) string {
	var keep []string
	for l := range strings.SplitSeq(strings.TrimRight(s, "\n"), "\n") {
		if strings.TrimSpace(l) != "" && !strings.HasPrefix(l, "#") || strings.HasPrefix(l, "# Samples") {
			keep = append(keep, l)
		}
	}
	if len(keep) > n {
		keep = keep[:n]
	}
	return strings.Join(keep, "\n")
}

// from is s from the line that holds marker on (all of s without one).
func from(s, marker string) string {
	if i := strings.Index(s, marker); i >= 0 {
		if j := strings.LastIndexByte(s[:i], '\n'); j >= 0 {
			return s[j+1:]
		}
		return s[i:]
	}
	return s
}
