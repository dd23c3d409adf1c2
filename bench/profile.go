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

// profile shows where docker-proxy spends its time, in a run of its own
// (tracing distorts what it watches, so it never runs with the table):
// strace -c over a bulk transfer (to confirm splice moves the bytes) and
// over a connection-rate run, and perf over a connection-rate run when
// perf works here.
func (b *bench) profile(ctx context.Context, dp *target) {
	fmt.Println()
	step("profile docker-proxy (pid %d)", dp.pid())
	if _, err := exec.LookPath("strace"); err != nil {
		fmt.Println("   strace is not installed (apt-get install -y strace): no syscall profile")
	} else {
		out := traced(ctx, []string{"strace", "-f", "-c", "-p", fmt.Sprint(dp.pid())}, func() {
			_, _ = runBulk(ctx, dp.sink, 1, true, 0, 1500*time.Millisecond, 0)
			_, _ = runBulk(ctx, dp.source, 1, false, 0, 1500*time.Millisecond, 0)
		})
		fmt.Printf("-- strace -f -c, 1 stream up 1.5s then down 1.5s:\n%s\n", top(from(out, "% time"), 20))
		out = traced(ctx, []string{"strace", "-f", "-c", "-p", fmt.Sprint(dp.pid())}, func() {
			_, _ = runRate(ctx, dp.echo, 2*time.Second, 0)
		})
		fmt.Printf("-- strace -f -c, connection rate for 2s:\n%s\n", top(from(out, "% time"), 20))
	}
	if _, err := exec.LookPath("perf"); err != nil {
		fmt.Println("   perf is not installed: no CPU profile")
		return
	}
	data := filepath.Join(b.tmp, "perf.data")
	out := traced(ctx, []string{"perf", "record", "-F", "999", "-g", "-o", data, "-p", fmt.Sprint(dp.pid())}, func() {
		_, _ = runRate(ctx, dp.echo, 3*time.Second, 0)
	})
	rep, err := exec.CommandContext(ctx, "perf", "report", "-i", data, "--stdio", "--no-children",
		"--sort", "dso,symbol", "-g", "none", "--percent-limit", "0.7").CombinedOutput()
	if err != nil {
		fmt.Printf("   perf did not work here: %v\n%s\n", err, top(out, 5))
		return
	}
	fmt.Printf("-- perf report, connection rate for 3s (symbols over 0.7%%):\n%s\n", top(string(rep), 45))
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

func top(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	var keep []string
	for _, l := range lines {
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
