package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// phaseNames are the measurements, in the order they run.
var phaseNames = []string{"idle", "bulk", "latency", "rate", "http", "swap", "restart"}

// Ports of the backend inside its container.
const (
	portSource = 9001
	portSink   = 9002
	portEcho   = 9003
	portHTTP   = 8080
	msgSize    = 64 // request/response message size
)

// bench is one run: what it made (so that cleanup can remove it) and what
// it measured.
type bench struct {
	p   params
	o   options
	run string // random id in every name this run gives

	tmp     string
	tag     string // the backend image, docker-proxy-bench-<run>:latest
	label   string // on every container this run starts
	ip      string // the first container's address
	fdLimit uint64 // RLIMIT_NOFILE after raising it; children inherit it
	wrkOK   bool   // wrk is installed, for the http phase
	erbOK   bool   // erb is installed, for the start script in the restart phase

	proxyBin  string // the docker-proxy binary under test
	imageOnce sync.Once
	proxyTag  string // its image, for the restart phase's containers
	imageErr  error

	mu        sync.Mutex
	procs     []*proc
	proxyCtrs []string // proxy containers by name (the start script's, which it does not label)
	sockets   []string // control sockets they may leave in /run/docker-proxy

	targets  []*target
	res      *results
	restarts []restartResult
}

func randomID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// main is the whole run, in order: raise the fd limit, build, start the
// container and the proxies, measure, print.
func (b *bench) main(ctx context.Context) error {
	b.res = newResults()
	b.label = "docker-proxy-bench=" + b.run
	b.tag = "docker-proxy-bench-" + b.run + ":latest"
	if err := b.raiseFDLimit(); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "docker-proxy-bench-")
	if err != nil {
		return err
	}
	b.tmp = tmp

	step("build docker-proxy and the backend (CGO_ENABLED=0, -trimpath)")
	root, err := repoRoot()
	if err != nil {
		return err
	}
	proxyBin := b.o.proxyBin
	if proxyBin == "" {
		proxyBin = filepath.Join(tmp, "docker-proxy")
		if err := goBuild(ctx, root, ".", proxyBin); err != nil {
			return err
		}
	}
	ctxDir := filepath.Join(tmp, "image")
	if err := goBuild(ctx, root, "./bench/backend", filepath.Join(ctxDir, "backend")); err != nil {
		return err
	}
	haproxyOK := ensureHAProxy(ctx)
	nginxOK := ensureNginx(ctx)
	if b.o.phases["http"] && !b.o.profile {
		b.wrkOK = ensureWrk(ctx)
	}
	if b.o.phases["restart"] && !b.o.profile {
		b.erbOK = ensureERB(ctx)
	}
	b.proxyBin = proxyBin

	step("build the backend image %s FROM scratch and start one container", b.tag)
	if err := buildImage(ctx, ctxDir, b.tag); err != nil {
		return err
	}
	id, err := b.startContainer(ctx, "base", "")
	if err != nil {
		return err
	}
	if b.ip, err = containerIP(ctx, id); err != nil {
		return err
	}
	direct := &target{name: tDirect,
		source: addr(b.ip, portSource), sink: addr(b.ip, portSink), echo: addr(b.ip, portEcho), http: addr(b.ip, portHTTP)}
	if err := waitEcho(ctx, direct.echo); err != nil {
		return fmt.Errorf("the backend container does not answer: %w", err)
	}
	b.targets = append(b.targets, direct)

	step("start docker-proxy, HAProxy (plain and splice), nginx stream and the bare Go proxy")
	dp, err := b.startDockerProxy(ctx, tDP, proxyBin, b.o.proxyEnv)
	if err != nil {
		return err
	}
	b.targets = append(b.targets, dp)
	if b.o.altBin != "" {
		alt, err := b.startDockerProxy(ctx, tAlt, b.o.altBin, b.o.altEnv)
		if err != nil {
			return err
		}
		b.targets = append(b.targets, alt)
	}
	if haproxyOK {
		for _, splice := range []bool{false, true} {
			t, err := b.startHAProxy(ctx, splice)
			if err != nil {
				fmt.Println("   HAProxy did not start, going on without it:", err)
				continue
			}
			b.targets = append(b.targets, t)
		}
	}
	if nginxOK {
		t, err := b.startNginx(ctx)
		if err != nil {
			fmt.Println("   nginx did not start, going on without it:", err)
		} else {
			b.targets = append(b.targets, t)
		}
	}
	bare, err := b.startBare(ctx)
	if err != nil {
		return err
	}
	b.targets = append(b.targets, bare)

	if b.o.profile {
		b.profile(ctx, dp)
		return ctx.Err()
	}

	if deadline, ok := ctx.Deadline(); ok {
		phases := b.o.phases
		if !b.wrkOK { // the http phase will only say that it has no wrk
			phases = maps.Clone(phases)
			delete(phases, "http")
		}
		b.p = b.p.fit(len(b.targets), phases, time.Until(deadline)-cleanupReserve)
	}

	// Idle memory first: it is the figure most disturbed by what came
	// before (sockets in TIME_WAIT, grown heaps).
	phases := []struct {
		key, name string
		run       func(context.Context) error
	}{
		{"idle", "idle connections: memory and descriptors", b.measureIdle},
		{"bulk", "bulk throughput and CPU per GB", b.measureBulk},
		{"latency", "request/response latency", b.measureLatency},
		{"rate", "connection rate and CPU per 1,000 connections", b.measureRate},
		{"http", "HTTP requests per second through each proxy (wrk, keep-alive)", b.measureHTTP},
		{"swap", "swap latency over deploys (docker-proxy)", b.measureSwaps},
		{"restart", "restarts of docker-proxy under load, per way of running it", b.measureRestarts},
	}
	var failed error
	for _, ph := range phases {
		if ctx.Err() != nil {
			break
		}
		if !b.o.phases[ph.key] {
			continue
		}
		step("%s", ph.name)
		t0 := time.Now()
		if err := ph.run(ctx); err != nil {
			fmt.Printf("   %s: %v\n", ph.name, err)
			if failed == nil {
				failed = fmt.Errorf("%s: %w", ph.name, err)
			}
		}
		fmt.Printf("   (%.1fs)\n", time.Since(t0).Seconds())
	}
	fmt.Println()
	b.printTable(os.Stdout)
	if failed == nil && ctx.Err() != nil {
		failed = ctx.Err()
	}
	return failed
}

var runStart = time.Now()

func step(format string, args ...any) {
	fmt.Printf("==> %5.1fs "+format+"\n", append([]any{time.Since(runStart).Seconds()}, args...)...)
}

func addr(ip string, port int) string { return ip + ":" + strconv.Itoa(port) }

// raiseFDLimit sets the soft RLIMIT_NOFILE to the hard one. Setting it
// explicitly (rather than relying on the Go runtime's own raise) makes the
// children inherit it: the proxies need it to hold thousands of idle
// connections.
func (b *bench) raiseFDLimit() error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("raise the fd limit: %w", err)
	}
	b.fdLimit = lim.Cur
	return nil
}

// cleanup removes everything the run made. It runs on every exit path and
// has its own deadline, so that it ends even when the run's has passed.
func (b *bench) cleanup() {
	b.mu.Lock()
	procs := b.procs
	b.procs = nil
	b.mu.Unlock()
	for _, p := range procs {
		p.stop()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b.mu.Lock()
	names, socks := b.proxyCtrs, b.sockets
	b.mu.Unlock()
	stopProxyCtrs(ctx, names...)
	for _, s := range socks {
		_ = os.Remove(s) // left only by a proxy that was killed
	}
	if b.proxyTag != "" {
		removeImage(ctx, b.proxyTag)
	}
	if b.label != "" {
		removeContainers(ctx, b.label)
		removeImage(ctx, b.tag)
	}
	if b.tmp != "" {
		_ = os.RemoveAll(b.tmp)
	}
}
