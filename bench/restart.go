package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The restart phase: docker-proxy itself restarted under load, in each way
// people run it. Clients make a new connection per request (one 64-byte
// exchange on the echo port, the server closing first), restartConc at a
// time, and retry restartRetry after a failure, as a client with a short
// back-off would. Each mode restarts the proxy b.p.restarts times and
// counts the connection attempts refused, the connections reset (or
// closed with no answer), other failures, and the longest a client
// waited for an answer: one attempt, or from its first failure to the
// answer that ended the run of failures; and the gap, the longest time
// from the first failed attempt of a restart to its last.

const (
	restartConc     = 16
	restartRetry    = 10 * time.Millisecond
	restartMaxConns = 2_000_000 // the load stops here at the latest
	restartSettle   = 50        // answers after a restart before the next one
	restartWait     = 20 * time.Second
	scriptTimeout   = 2 * time.Minute // one run of the start script
)

// restartMode is one way of restarting the proxy.
type restartMode struct {
	name  string
	start func(context.Context) (*restarter, error)
}

// restarter is a running proxy in one mode: where it listens, how to
// restart it, and how to stop it for good.
type restarter struct {
	addr    string
	restart func(context.Context) error
	stop    func()
}

// restartResult is one mode's figures, or why it has none.
type restartResult struct {
	mode                            string
	restarts                        int
	attempts, refused, reset, other int64
	longest, gap                    time.Duration
	skipped                         string
}

func (b *bench) restartModes() []restartMode {
	return []restartMode{
		{"host process, hand-over to a new process", func(ctx context.Context) (*restarter, error) { return b.hostRestarter(ctx, true) }},
		{"host process, stop then start (baseline)", func(ctx context.Context) (*restarter, error) { return b.hostRestarter(ctx, false) }},
		{"container, --network host (start.sh)", func(ctx context.Context) (*restarter, error) { return b.scriptRestarter(ctx, true) }},
		{"container, published ports (start.sh)", func(ctx context.Context) (*restarter, error) { return b.scriptRestarter(ctx, false) }},
	}
}

// measureRestarts runs every mode in turn.
func (b *bench) measureRestarts(ctx context.Context) error {
	var failed error
	for _, m := range b.restartModes() {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r, err := b.restartsOf(ctx, m)
		if err != nil {
			r.skipped = err.Error()
			b.res.note(fmt.Sprintf("restarts, %s: %v", m.name, err))
			if failed == nil && !errors.Is(err, errNoERB) {
				failed = fmt.Errorf("%s: %w", m.name, err)
			}
		}
		b.restarts = append(b.restarts, r)
	}
	return failed
}

func (b *bench) restartsOf(ctx context.Context, m restartMode) (restartResult, error) {
	r := restartResult{mode: m.name}
	fmt.Printf("   %s\n", m.name)
	rt, err := m.start(ctx)
	if err != nil {
		return r, err
	}
	defer rt.stop()
	if err := waitEcho(ctx, rt.addr); err != nil {
		return r, fmt.Errorf("the proxy does not forward: %w", err)
	}
	l := startRestartLoad(rt.addr)
	defer l.stop()
	if err := l.waitAnswers(ctx, restartSettle); err != nil {
		return r, err
	}
	for i := range b.p.restarts {
		l.newWindow()
		if err := rt.restart(ctx); err != nil {
			return r, fmt.Errorf("restart %d: %w", i+1, err)
		}
		r.restarts++
		if err := l.waitAnswers(ctx, restartSettle); err != nil {
			return r, fmt.Errorf("after restart %d: %w", i+1, err)
		}
		r.gap = max(r.gap, l.window())
	}
	l.stop()
	r.attempts, r.refused, r.reset, r.other = l.attempts.Load(), l.refused.Load(), l.reset.Load(), l.other.Load()
	r.longest = l.longest()
	if l.firstErr != nil {
		b.res.note(fmt.Sprintf("restarts, %s: first failure: %v", m.name, l.firstErr))
	}
	return r, nil
}

// hostRestarter runs the docker-proxy binary on a free loopback port, with
// its control socket in the temp dir. A restart with handover starts a
// second process with the same flags, which takes over, and waits for the
// first to exit by itself; without, it stops the process (SIGTERM) and
// starts a new one.
func (b *bench) hostRestarter(ctx context.Context, handover bool) (*restarter, error) {
	ports, err := freePorts(1)
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(b.tmp, fmt.Sprintf("restart-%d.sock", ports[0]))
	args := []string{"-address", "127.0.0.1", "-ports", fmt.Sprintf("%d=%d", ports[0], portEcho), "-tag", b.tag,
		"-status_url", fmt.Sprintf(":%d/status", portHTTP), "-grace_period", "1s", "-shutdown_timeout", "1s",
		"-control", sock}
	cur, err := b.startEnv("restart-host", b.o.proxyEnv, b.proxyBin, args...)
	if err != nil {
		return nil, err
	}
	rt := &restarter{addr: addr("127.0.0.1", ports[0]), stop: func() { cur.stop() }}
	rt.restart = func(ctx context.Context) error {
		old := cur
		if !handover {
			old.stop()
		}
		n, err := b.startEnv("restart-host", b.o.proxyEnv, b.proxyBin, args...)
		if err != nil {
			return err
		}
		cur = n
		if !handover {
			return nil
		}
		// The old process stops accepting once the new one does, and
		// exits when its open connections are done.
		select {
		case <-old.done:
		case <-n.done:
			return fmt.Errorf("the new process exited:\n%s", n.logTail())
		case <-time.After(restartWait):
			return fmt.Errorf("the old process did not exit within %v:\n%s", restartWait, n.logTail())
		case <-ctx.Done():
			return ctx.Err()
		}
		if data, _ := os.ReadFile(n.out.Name()); !strings.Contains(string(data), "took over from the running proxy") {
			return fmt.Errorf("the new process did not take over:\n%s", n.logTail())
		}
		return nil
	}
	return rt, nil
}

var errNoERB = errors.New("erb is not installed (apt-get install -y ruby): no start script")

// scriptRestarter renders config/deploy/start.sh.erb for a proxy container
// of the run's image on a free loopback port, on the host network or with
// the port published, and runs it: once to start, and again for each
// restart.
func (b *bench) scriptRestarter(ctx context.Context, hostNet bool) (*restarter, error) {
	if !b.erbOK {
		return nil, errNoERB
	}
	img, err := b.proxyImage(ctx)
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(1)
	if err != nil {
		return nil, err
	}
	mode := "published"
	if hostNet {
		mode = "host"
	}
	name := "docker-proxy-bench-" + b.run + "-proxy-" + mode
	b.mu.Lock()
	b.proxyCtrs = append(b.proxyCtrs, name, name+"-next")
	if hostNet {
		b.sockets = append(b.sockets, fmt.Sprintf("/run/docker-proxy/127.0.0.1-%d.sock", ports[0]))
	}
	b.mu.Unlock()
	vars := []string{"name=" + name, "image=" + img, "address=127.0.0.1",
		fmt.Sprintf("ports=%d=%d", ports[0], portEcho), "tag=" + b.tag,
		fmt.Sprintf("status_url=:%d/status", portHTTP), "grace_period=1s", "shutdown_timeout=1s"}
	if hostNet {
		vars = append(vars, "network_mode=host")
	}
	script, err := b.renderStartScript(ctx, mode, vars)
	if err != nil {
		return nil, err
	}
	run := func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, scriptTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, "bash", script)
		cmd.Env = noProxyEnv()
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("start.sh: %v\n%s", err, out)
		}
		return nil
	}
	if err := run(ctx); err != nil {
		return nil, err
	}
	return &restarter{addr: addr("127.0.0.1", ports[0]), restart: run, stop: func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		stopProxyCtrs(ctx, name, name+"-next")
	}}, nil
}

// renderStartScript renders the template with vars into the temp dir.
func (b *bench) renderStartScript(ctx context.Context, mode string, vars []string) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "erb", append(append([]string{"-T", "-"}, vars...),
		filepath.Join(root, "config/deploy/start.sh.erb"))...)
	cmd.Env = noProxyEnv()
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("render start.sh.erb: %w", err)
	}
	script := filepath.Join(b.tmp, "start-"+mode+".sh")
	return script, os.WriteFile(script, out, 0o755)
}

// noProxyEnv is the environment without DOCKER_PROXY_* variables, which
// the template would read as settings.
func noProxyEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DOCKER_PROXY_") {
			env = append(env, kv)
		}
	}
	return env
}

// proxyImage builds, once a run, the project's image around the
// docker-proxy binary under test, from the repository's Dockerfile.
func (b *bench) proxyImage(ctx context.Context) (string, error) {
	b.imageOnce.Do(func() {
		root, err := repoRoot()
		if err != nil {
			b.imageErr = err
			return
		}
		dir := filepath.Join(b.tmp, "proxy-image")
		df, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
		if err == nil {
			err = os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
		}
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, "Dockerfile"), df, 0o644)
		}
		if err == nil {
			err = copyFile(b.proxyBin, filepath.Join(dir, "bin", "docker-proxy"))
		}
		if err != nil {
			b.imageErr = err
			return
		}
		b.proxyTag = "docker-proxy-bench-" + b.run + "-proxy:latest"
		_, b.imageErr = docker(ctx, "build", "-q", "-t", b.proxyTag, dir)
	})
	return b.proxyTag, b.imageErr
}

func copyFile(from, to string) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, data, 0o755)
}

// stopProxyCtrs stops the named containers (SIGTERM first, so that a proxy
// on the host network removes its control socket) and removes them.
func stopProxyCtrs(ctx context.Context, names ...string) {
	for _, n := range names {
		if _, err := docker(ctx, "inspect", "-f", "{{.Id}}", n); err != nil {
			continue // never made, or gone
		}
		_, _ = docker(ctx, "stop", "-t", "5", n)
		if _, err := docker(ctx, "rm", "-f", n); err != nil {
			fmt.Fprintln(os.Stderr, "bench: cleanup:", err)
		}
	}
}

// restartLoad is restartConc clients making one exchange per new
// connection until stopped (or restartMaxConns in all).
type restartLoad struct {
	ok, attempts, refused, reset, other atomic.Int64

	mu          sync.Mutex
	long        time.Duration
	firstErr    error
	first, last time.Time // failures since newWindow

	stopc chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

func startRestartLoad(a string) *restartLoad {
	l := &restartLoad{stopc: make(chan struct{})}
	dialer := net.Dialer{Timeout: 5 * time.Second}
	for range restartConc {
		l.wg.Go(func() {
			var since time.Time // the first failure of the current run of them
			for l.running() {
				l.attempts.Add(1)
				t0 := time.Now()
				err := restartConn(&dialer, a)
				now := time.Now()
				l.waited(now.Sub(t0))
				if err != nil {
					l.failed(err, t0, now)
					if since.IsZero() {
						since = t0
					}
					select {
					case <-l.stopc:
					case <-time.After(restartRetry):
					}
					continue
				}
				l.ok.Add(1)
				if !since.IsZero() {
					l.waited(now.Sub(since))
					since = time.Time{}
				}
			}
		})
	}
	return l
}

func (l *restartLoad) running() bool {
	select {
	case <-l.stopc:
		return false
	default:
		return l.attempts.Load() < restartMaxConns
	}
}

func (l *restartLoad) waited(d time.Duration) {
	l.mu.Lock()
	l.long = max(l.long, d)
	l.mu.Unlock()
}

func (l *restartLoad) longest() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.long
}

// errUnanswered: the connection was accepted and closed with no answer.
var errUnanswered = errors.New("closed with no answer")

// failed counts a failed attempt from t0 to t1.
func (l *restartLoad) failed(err error, t0, t1 time.Time) {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		l.refused.Add(1)
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, errUnanswered):
		l.reset.Add(1)
	default:
		l.other.Add(1)
	}
	l.mu.Lock()
	if l.firstErr == nil {
		l.firstErr = err
	}
	if l.first.IsZero() || t0.Before(l.first) {
		l.first = t0
	}
	if t1.After(l.last) {
		l.last = t1
	}
	l.mu.Unlock()
}

// newWindow starts a new window of failures: one restart's.
func (l *restartLoad) newWindow() {
	l.mu.Lock()
	l.first, l.last = time.Time{}, time.Time{}
	l.mu.Unlock()
}

// window is the time from the first failed attempt since newWindow to the
// end of the last (0: none failed).
func (l *restartLoad) window() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last.Sub(l.first)
}

// waitAnswers waits until n more connections have been answered.
func (l *restartLoad) waitAnswers(ctx context.Context, n int64) error {
	want := l.ok.Load() + n
	deadline := time.Now().Add(restartWait)
	for l.ok.Load() < want {
		if time.Now().After(deadline) {
			return fmt.Errorf("fewer than %d connections answered within %v", n, restartWait)
		}
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

func (l *restartLoad) stop() {
	l.once.Do(func() { close(l.stopc) })
	l.wg.Wait()
}

// restartConn is one exchange on a new connection: the 64-byte message
// that makes the backend answer and close, its answer, and the close.
func restartConn(d *net.Dialer, a string) error {
	c, err := d.Dial("tcp", a)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	err = quit(c)
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errUnanswered
	}
	return err
}
