package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// profile shows where the proxies spend their time, in a run of its own
// (tracing distorts what it watches, so it never runs with the table):
// strace -c of docker-proxy over a bulk transfer, to confirm that splice
// moves the bytes; then, for every proxy (all its processes: nginx's
// master and workers), strace -c over a connection-rate run and over a
// request/response run, printed side by side as system calls per
// connection and per request; and perf over another connection-rate run
// (kernel against user time, and docker-proxy's hottest symbols), where
// perf works. Every load is short and fixed, so the whole stays within a
// minute or so of tracing.
func (b *bench) profile(ctx context.Context, dp *target) {
	fmt.Println()
	_, errStrace := exec.LookPath("strace")
	_, errPerf := exec.LookPath("perf")
	dur := max(time.Second, 2*b.p.rateDur) // each traced load
	var perConn, perReq []opCounts
	if errStrace != nil {
		fmt.Println("   strace is not installed (apt-get install -y strace): no system call counts")
	} else {
		step("strace -f -c docker-proxy (pid %d): 1 stream up %v, then down %v", dp.pid(), dur*3/4, dur*3/4)
		out := traced(ctx, []string{"strace", "-f", "-c", "-p", fmt.Sprint(dp.pid())}, func() {
			_, _ = runBulk(ctx, dp.sink, 1, true, 0, dur*3/4, 0)
			_, _ = runBulk(ctx, dp.source, 1, false, 0, dur*3/4, 0)
		})
		fmt.Println(top(from(out, "% time"), 16))
	}
	for _, t := range b.targets {
		if t.proc == nil || ctx.Err() != nil {
			continue
		}
		if errStrace == nil {
			argv := []string{"strace", "-f", "-c"}
			for _, p := range tree(t.pid()) {
				argv = append(argv, "-p", fmt.Sprint(p))
			}
			step("strace -f -c %s (pid %s): connection rate for %v, then request/response for %v", t.name, treePids(t.pid()), dur, dur)
			var r rateResult
			out := traced(ctx, argv, func() {
				r, _ = runRate(ctx, t.echo, dur, 0)
			})
			perConn = append(perConn, opCounts{t.name, r.all, straceCounts(out)})
			var n int64
			out = traced(ctx, argv, func() {
				n, _ = roundTrips(ctx, t.echo, dur)
			})
			perReq = append(perReq, opCounts{t.name, n, straceCounts(out)})
		}
		if errPerf == nil {
			b.perf(ctx, t, dur+dur/2)
		}
	}
	if len(perConn) > 0 {
		fmt.Println()
		fmt.Println("system calls per connection (strace -f -c over the connection-rate load: accept, dial the")
		fmt.Println("backend, one 64-byte request/response, both closes), per proxy, all its threads and processes:")
		printPerOp(os.Stdout, perConn, "connections traced")
		fmt.Println()
		fmt.Println("system calls per request (strace -f -c over the latency load: one 64-byte request and its")
		fmt.Println("response on one kept connection, one at a time):")
		printPerOp(os.Stdout, perReq, "requests traced")
		fmt.Println()
		var futex []string
		for _, c := range perConn {
			futex = append(futex, fmt.Sprintf("%s %s", c.target, perOp(c.calls["futex"], c.ops)))
		}
		fmt.Println("futex per connection:", strings.Join(futex, ", "))
		fmt.Println("(strace slows every proxy several times over: counts per operation hold, rates and times do not)")
	}
}

// opCounts is one proxy's system calls, by name, over a load of ops
// operations (connections or requests).
type opCounts struct {
	target string
	ops    int64
	calls  map[string]int64
}

func perOp(calls, ops int64) string {
	if ops <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", float64(calls)/float64(ops))
}

// printPerOp prints one line per system call that any proxy makes at
// least once every 20 operations, most frequent (summed over the proxies)
// first, a column per proxy, then the totals over all system calls.
func printPerOp(out io.Writer, cs []opCounts, opsLabel string) {
	weight := map[string]float64{}
	for _, c := range cs {
		if c.ops <= 0 {
			continue
		}
		for name, n := range c.calls {
			if name != "total" {
				weight[name] += float64(n) / float64(c.ops)
			}
		}
	}
	var names []string
	for name := range weight {
		for _, c := range cs {
			if c.ops > 0 && float64(c.calls[name])/float64(c.ops) >= 0.05 {
				names = append(names, name)
				break
			}
		}
	}
	sort.Slice(names, func(i, j int) bool {
		if weight[names[i]] != weight[names[j]] {
			return weight[names[i]] > weight[names[j]]
		}
		return names[i] < names[j]
	})
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "syscall\t")
	for _, c := range cs {
		fmt.Fprintf(tw, "%s\t", c.target)
	}
	fmt.Fprintln(tw)
	for _, name := range append(names, "total") {
		fmt.Fprintf(tw, "%s\t", name)
		for _, c := range cs {
			fmt.Fprintf(tw, "%s\t", perOp(c.calls[name], c.ops))
		}
		fmt.Fprintln(tw)
	}
	fmt.Fprintf(tw, "%s\t", opsLabel)
	for _, c := range cs {
		fmt.Fprintf(tw, "%d\t", c.ops)
	}
	fmt.Fprintln(tw)
	_ = tw.Flush()
}

// roundTrips makes request/response round trips on one connection for
// dur and returns how many; unlike the latency measurement it has no
// warm-up, since strace counts from the first.
func roundTrips(ctx context.Context, a string, dur time.Duration) (int64, error) {
	c, err := net.DialTimeout("tcp", a, 2*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	end := time.Now().Add(dur)
	_ = c.SetDeadline(end.Add(5 * time.Second))
	var msg [msgSize]byte
	msg[0] = 'e'
	var n int64
	for time.Now().Before(end) && ctx.Err() == nil {
		if _, err := c.Write(msg[:]); err != nil {
			return n, err
		}
		if _, err := io.ReadFull(c, msg[:]); err != nil {
			return n, err
		}
		n++
	}
	return n, quit(c)
}

// straceCounts is the calls column of strace -c's table by system call
// name, the total line as "total".
func straceCounts(out string) map[string]int64 {
	m := map[string]int64{}
	for line := range strings.SplitSeq(from(out, "% time"), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || strings.HasPrefix(f[0], "-") || f[0] == "%" {
			continue
		}
		if n, err := strconv.ParseInt(f[3], 10, 64); err == nil {
			m[f[len(f)-1]] += n
		}
	}
	return m
}

// perf samples t during a connection-rate run and prints kernel against
// user time and the hottest symbols, more of them for docker-proxy, so
// that its profile can be read beside the others'.
func (b *bench) perf(ctx context.Context, t *target, dur time.Duration) {
	pids := treePids(t.pid())
	step("perf record %s (pid %s): connection rate for %v", t.name, pids, dur)
	data := filepath.Join(b.tmp, "perf-"+t.name+".data")
	out := traced(ctx, []string{"perf", "record", "-F", "999", "-g", "-o", data, "-p", pids}, func() {
		_, _ = runRate(ctx, t.echo, dur, 0)
	})
	dso, err := exec.CommandContext(ctx, "perf", "report", "-i", data, "--stdio", "--no-children",
		"--sort", "dso", "-g", "none").CombinedOutput()
	if err != nil {
		fmt.Printf("   perf did not work here: %v\n%s\n", err, top(out, 5))
		return
	}
	fmt.Println(top(string(dso), 6))
	sym, err := exec.CommandContext(ctx, "perf", "report", "-i", data, "--stdio", "--no-children",
		"--sort", "dso,symbol", "-g", "none", "--percent-limit", "0.7").CombinedOutput()
	if err == nil {
		n := 10
		if t.name == tDP {
			n = 30
		}
		fmt.Println(top(string(sym), n))
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
