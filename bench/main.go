// Bench measures docker-proxy against the real Docker daemon, side by side
// with what users would otherwise run: a direct connection to the
// container, HAProxy in TCP mode with and without splice, nginx's stream
// module, and a bare Go io.Copy proxy (the floor of what Go costs); HTTP
// requests per second through each with wrk, where wrk is installed or
// installable (Debian's package). It builds a backend image FROM scratch,
// starts one container of it, runs every proxy as its own process (or
// process tree: nginx's master and workers), so that /proc gives each
// one's CPU, memory and descriptors, measures the targets alternately, and
// prints one table of medians. Last, it restarts docker-proxy itself under
// load in each way it runs (a host process handing over to a new one, or
// stopped and started; a container through config/deploy/start.sh, on the
// host network or with published ports) and prints what clients saw.
//
//	go run ./bench          # full run, under 5 minutes
//	go run ./bench -quick   # shorter measurements, under a minute
//	go run ./bench -profile # no table: strace -c and perf of the proxies under load,
//	                        # system calls per connection and per request side by side
//
// For comparing a change before committing it: -proxy_bin runs a docker-proxy
// built elsewhere, -proxy_env sets its environment (GOMAXPROCS=1, GODEBUG=...),
// -alt_bin and -alt_env add a second docker-proxy as one more column of the
// same run (on a shared machine, runs minutes apart do not compare), and
// -phases runs only some measurements.
//
// It ends by itself (a whole-run deadline) and removes everything it made
// on every exit path: containers, image, subprocesses, temp dir.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

// params are the sizes of one run; quick shortens every measurement and
// keeps three repetitions.
type params struct {
	budget     time.Duration // the whole run, cleanup excluded
	reps       int
	bulkWarm   time.Duration // before the bulk window opens
	bulkDur    time.Duration
	rateDur    time.Duration
	latDur     time.Duration
	httpDur    time.Duration // wrk's -d, whole seconds, at least 1s
	idleConns  int
	idleSettle time.Duration
	swaps      int
	swapReady  time.Duration // time for docker run and inspect before /status turns 200
	restarts   int           // of the proxy, per restart mode
}

var (
	fullParams = params{
		budget: 4*time.Minute + 30*time.Second, reps: 3,
		bulkWarm: 200 * time.Millisecond, bulkDur: 800 * time.Millisecond,
		rateDur: time.Second, latDur: time.Second, httpDur: 2 * time.Second,
		idleConns: 5000, idleSettle: 500 * time.Millisecond, swaps: 20, swapReady: time.Second,
		restarts: 5,
	}
	quickParams = params{
		budget: 58 * time.Second, reps: 3,
		bulkWarm: 30 * time.Millisecond, bulkDur: 100 * time.Millisecond,
		rateDur: 200 * time.Millisecond, latDur: 200 * time.Millisecond, httpDur: time.Second,
		idleConns: 1000, idleSettle: 150 * time.Millisecond, swaps: 5, swapReady: 700 * time.Millisecond,
		restarts: 2,
	}
)

func main() {
	quick := flag.Bool("quick", false, "shorter measurements (under a minute)")
	var o options
	flag.BoolVar(&o.profile, "profile", false, "instead of the table: strace -c and perf (where they work) of the proxies under load")
	flag.StringVar(&o.proxyBin, "proxy_bin", "", "measure this docker-proxy binary instead of building the checkout")
	env := flag.String("proxy_env", "", "comma-separated `KEY=VALUE`s added to docker-proxy's environment")
	flag.StringVar(&o.altBin, "alt_bin", "", "also measure this docker-proxy binary, as the column dp-alt")
	altEnv := flag.String("alt_env", "", "comma-separated `KEY=VALUE`s added to dp-alt's environment (with -alt_bin)")
	phases := flag.String("phases", strings.Join(phaseNames, ","), "the measurements to run, comma-separated")
	bare := flag.String("bare", "", "internal: run the bare Go proxy for LISTEN=TARGET,... and nothing else")
	flag.Parse()
	if *bare != "" {
		runBare(*bare)
		return
	}
	if *env != "" {
		o.proxyEnv = strings.Split(*env, ",")
	}
	if *altEnv != "" {
		o.altEnv = strings.Split(*altEnv, ",")
	}
	o.phases = map[string]bool{}
	for ph := range strings.SplitSeq(*phases, ",") {
		if !slices.Contains(phaseNames, ph) {
			fmt.Fprintf(os.Stderr, "bench: unknown phase %q in -phases: want some of %s\n", ph, strings.Join(phaseNames, ","))
			os.Exit(2)
		}
		o.phases[ph] = true
	}
	p := fullParams
	if *quick {
		p = quickParams
	}
	os.Exit(benchMain(p, o))
}

// options are the flags that change what runs, not how long.
type options struct {
	profile  bool
	proxyBin string
	proxyEnv []string
	altBin   string
	altEnv   []string
	phases   map[string]bool
}

// benchMain runs the benchmark and cleans up whatever happens, including
// a panic or a signal.
func benchMain(p params, o options) (code int) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), p.budget)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	b := &bench{p: p, o: o, run: randomID()}
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintln(os.Stderr, "bench: panic:", r)
			code = 1
		}
		b.cleanup()
		fmt.Printf("run took %.1fs (cleanup included)\n", time.Since(start).Seconds())
	}()
	err := b.main(ctx)
	switch {
	case err == nil:
		return 0
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		fmt.Fprintf(os.Stderr, "bench: the run's deadline (%v) passed: %v\n", p.budget, err)
	case ctx.Err() != nil:
		fmt.Fprintln(os.Stderr, "bench: interrupted:", err)
	default:
		fmt.Fprintln(os.Stderr, "bench:", err)
	}
	return 1
}

// command is how this run was started, for the table's header.
func command() string {
	return strings.TrimSpace("go run ./bench " + strings.Join(os.Args[1:], " "))
}
