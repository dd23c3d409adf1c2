package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

// row is one line of the table: a metric and how its samples become one
// figure per target.
type row struct {
	key, label string
	prec       int
	agg        string // "median" (of repetitions), "sum", "p50", "max", "minus-direct"
}

var rows = []row{
	{"gbps-1-up", "bulk 1 stream upload (GB/s)", 2, "median"},
	{"gbps-1-down", "bulk 1 stream download (GB/s)", 2, "median"},
	{"gbps-8-up", "bulk 8 streams upload (GB/s)", 2, "median"},
	{"gbps-8-down", "bulk 8 streams download (GB/s)", 2, "median"},
	{"cpu-s-per-gb", "proxy CPU per GB moved (CPU-s/GB)", 3, "median"},
	{"conn-rate", "connection rate, 32 at once (conn/s)", 0, "median"},
	{"conn-errors", "connection errors (all repetitions)", 0, "sum"},
	{"cpu-ms-per-1k", "proxy CPU per 1,000 connections (CPU-ms)", 1, "median"},
	{"lat-p50", "request/response latency p50 (µs)", 1, "median"},
	{"lat-p99", "request/response latency p99 (µs)", 1, "median"},
	{"lat-p999", "request/response latency p99.9 (µs)", 1, "median"},
	{"http-rps", "HTTP requests/s, wrk keep-alive (32 conns)", 0, "median"},
	{"http-p50", "HTTP latency p50 under wrk (µs)", 0, "median"},
	{"http-p99", "HTTP latency p99 under wrk (µs)", 0, "median"},
	{"http-cpu-us", "proxy CPU per HTTP request under wrk (CPU-µs)", 1, "median"},
	{"idle-n", "idle connections held for the memory figures", 0, "median"},
	{"rss-kib", "proxy RSS per idle connection (KiB)", 2, "median"},
	{"kern-kib", "kernel memory per idle connection, system-wide (KiB)", 2, "median"},
	{"kern-kib", "kernel memory added by the proxy (KiB/conn, minus direct)", 2, "minus-direct"},
	{"fds", "proxy file descriptors per idle connection", 2, "median"},
	{"idle-cap", "idle connections the proxy holds under the fd limit", 0, "median"},
	{"swap-ms", "swap latency p50: ready to first new connection (ms)", 1, "p50"},
	{"swap-ms", "swap latency max (ms)", 1, "max"},
	{"swap-poll-ms", "  of which ready to first 200 poll, p50 (ms)", 1, "p50"},
	{"swap-poll-ms", "  of which ready to first 200 poll, max (ms)", 1, "max"},
	{"swap-route-ms", "  of which first 200 to first new connection, p50 (ms)", 1, "p50"},
	{"swap-route-ms", "  of which first 200 to first new connection, max (ms)", 1, "max"},
	{"swap-failed", "deploys without a measurement", 0, "sum"},
	{"swap-probe-errors", "failed probe connections during deploys", 0, "sum"},
}

func (b *bench) value(r row, target string) float64 {
	switch r.agg {
	case "sum":
		return b.res.sum(r.key, target)
	case "p50", "max":
		b.res.mu.Lock()
		xs := b.res.samples[r.key][target]
		b.res.mu.Unlock()
		if len(xs) == 0 {
			return math.NaN()
		}
		if r.agg == "p50" {
			return median(xs)
		}
		m := xs[0]
		for _, x := range xs {
			m = max(m, x)
		}
		return m
	case "minus-direct":
		if target == tDirect {
			return math.NaN()
		}
		return b.res.median(r.key, target) - b.res.median(r.key, tDirect)
	}
	return b.res.median(r.key, target)
}

// printTable prints the header (machine, command, date) and one line per
// figure: each target's value, then docker-proxy's ratio to the others.
func (b *bench) printTable(out io.Writer) {
	host, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Fprintf(out, "docker-proxy benchmark, %s\n", time.Now().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(out, "machine: %d cores (nproc), kernel %s, %s, %s, %s, docker %s\n",
		runtime.NumCPU(), strings.TrimSpace(string(host)), runtime.Version(), haproxyVersion(), nginxVersion(), dockerVersion())
	fmt.Fprintf(out, "command: %s\n", command())
	if b.o.proxyBin != "" || len(b.o.proxyEnv) > 0 {
		fmt.Fprintf(out, "docker-proxy: %s %s\n", b.o.proxyBin, strings.Join(b.o.proxyEnv, " "))
	}
	if b.o.altBin != "" {
		fmt.Fprintf(out, "dp-alt: %s %s\n", b.o.altBin, strings.Join(b.o.altEnv, " "))
	}
	fmt.Fprintf(out, "medians of %d repetitions, targets alternating; bulk %v per window, connection rate and latency %v each, wrk -t%d -c%d -d%ds, %d idle connections (fewer where the fds would not fit under the limit of %d), %d deploys\n\n",
		b.p.reps, b.p.bulkDur.Round(time.Millisecond), b.p.rateDur.Round(time.Millisecond), wrkThreads, wrkConns, wrkSeconds(b.p.httpDur), b.p.idleConns, b.fdLimit, b.p.swaps)

	var names []string
	for _, n := range targetOrder {
		if b.target(n) != nil {
			names = append(names, n)
		}
	}
	ratios := []string{}
	for _, n := range names {
		if n != tDP && n != tAlt {
			ratios = append(ratios, n)
		}
	}
	figures := false // a -phases restart run has none
	for _, r := range rows {
		figures = figures || b.res.samples[r.key] != nil
	}
	if figures {
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprint(tw, "figure\t")
		for _, n := range names {
			fmt.Fprintf(tw, "%s\t", n)
		}
		for _, n := range ratios {
			fmt.Fprintf(tw, "dp/%s\t", n)
		}
		fmt.Fprintln(tw)
		for _, r := range rows {
			if b.res.samples[r.key] == nil {
				continue
			}
			fmt.Fprintf(tw, "%s\t", r.label)
			dp := b.value(r, tDP)
			for _, n := range names {
				fmt.Fprintf(tw, "%s\t", format(b.value(r, n), r.prec))
			}
			for _, n := range ratios {
				fmt.Fprintf(tw, "%s\t", ratio(dp, b.value(r, n), r))
			}
			fmt.Fprintln(tw)
		}
		_ = tw.Flush()
		fmt.Fprintln(out)
	}
	b.printRestarts(out)
	fmt.Fprintln(out, "notes: CPU is utime+stime of the proxy from /proc/PID/stat, RSS its VmRSS growth and fds its open")
	fmt.Fprintln(out, "descriptors, each summed over the process and its children (nginx's master and workers; the other")
	fmt.Fprintln(out, "proxies are one process); kernel memory is the growth of Slab+KernelStack+PageTables in /proc/meminfo,")
	fmt.Fprintln(out, "system-wide (the direct figure is the client and server sockets alone); \"-\" is not applicable.")
	for _, n := range b.res.notes {
		fmt.Fprintln(out, "note:", n)
	}
}

func format(v float64, prec int) string {
	if math.IsNaN(v) {
		return "-"
	}
	return fmt.Sprintf("%.*f", prec, v)
}

// ratio is docker-proxy's figure over another target's, for the figures
// where a ratio means something.
func ratio(dp, other float64, r row) string {
	switch r.key {
	case "idle-n", "conn-errors", "swap-failed", "swap-probe-errors":
		return "-"
	}
	if math.IsNaN(dp) || math.IsNaN(other) || other == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", dp/other)
}

func haproxyVersion() string {
	out, err := exec.Command("haproxy", "-v").Output()
	if err != nil {
		return "no haproxy"
	}
	f := strings.Fields(strings.SplitN(string(out), "\n", 2)[0])
	if len(f) >= 3 {
		return "HAProxy " + f[2]
	}
	return "HAProxy"
}

func dockerVersion() string {
	out, err := exec.Command("docker", "version", "-f", "{{.Server.Version}}").Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}

// printRestarts prints the restart phase's figures, one line per way of
// restarting docker-proxy (nothing when the phase did not run).
func (b *bench) printRestarts(out io.Writer) {
	if len(b.restarts) == 0 {
		return
	}
	fmt.Fprintf(out, "restarts of docker-proxy under load: %d clients, a new connection per exchange, each retried %v after a failure;\n", restartConc, restartRetry)
	fmt.Fprintln(out, "gap: first to last failed attempt of one restart; wait: one attempt, or a client's first failure to its next answer")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "restart mode\trestarts\tconnections\trefused\treset\tother failures\tlongest gap (ms)\tlongest wait (ms)\t")
	for _, r := range b.restarts {
		if r.skipped != "" {
			fmt.Fprintf(tw, "%s\t%d\t-\t-\t-\t-\t-\t-\t\n", r.mode, r.restarts)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%.1f\t%.1f\t\n", r.mode, r.restarts, r.attempts, r.refused, r.reset, r.other, ms(r.gap), ms(r.longest))
	}
	_ = tw.Flush()
	fmt.Fprintln(out)
}
