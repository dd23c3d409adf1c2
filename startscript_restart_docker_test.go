package main

// Restarts of the proxy container through the rendered start script,
// against the real daemon and the project's image: on the host network the
// new container takes over the old one's sockets and no client sees it;
// with published ports the script leaves a gap, which is measured here.

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
)

// renderScript renders config/deploy/start.sh.erb with vars into a file.
func renderScript(t *testing.T, vars ...string) string {
	t.Helper()
	erb := needERB(t)
	render := exec.Command(erb, append(append([]string{"-T", "-"}, vars...), "config/deploy/start.sh.erb")...)
	render.Env = cleanEnv()
	out, err := render.Output()
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	script := filepath.Join(t.TempDir(), "start.sh")
	if err := os.WriteFile(script, out, 0o755); err != nil {
		t.Fatal(err)
	}
	return script
}

// runScript runs the start script, bounded, and returns what it said.
func runScript(t *testing.T, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("start script: %v\n%s", err, out)
	}
	return string(out)
}

// cleanupProxyCtrs removes the proxy containers the script makes, name and
// name-next, when the test ends: stopped first (SIGTERM), so that a proxy
// on the host network removes its control socket, then removed. sock, the
// control socket, is removed if a proxy left it, and controlDir too if
// the test made it.
func cleanupProxyCtrs(t *testing.T, name, sock string) {
	t.Helper()
	_, err := os.Stat(controlDir)
	dirWas := err == nil
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, n := range []string{name, name + "-next"} {
			secs := 15
			_ = dockerCli.ContainerStop(ctx, n, container.StopOptions{Timeout: &secs})
			if t.Failed() {
				if logs, err := ctrLogs(ctx, n); err == nil {
					t.Logf("%s log:\n%s", n, logs)
				}
			}
			_ = dockerCli.ContainerRemove(ctx, n, container.RemoveOptions{Force: true})
		}
		if sock != "" {
			_ = os.Remove(sock)
		}
		if !dirWas {
			_ = os.Remove(controlDir) // only if empty
		}
	})
}

// ctrLogs is a container's log, stdout and stderr together.
func ctrLogs(ctx context.Context, name string) (string, error) {
	rc, err := dockerCli.ContainerLogs(ctx, name, container.LogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		return "", err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, 1<<20))
	return string(bytes.ToValidUTF8(b, nil)), err
}

// proxyCtr inspects the proxy container by name: its id, and whether it
// runs with the restart policy the script gives.
func proxyCtr(t *testing.T, name string) string {
	t.Helper()
	info, err := dockerCli.ContainerInspect(context.Background(), name)
	if err != nil {
		t.Fatalf("the script left no container %s: %v", name, err)
	}
	if !info.State.Running {
		t.Fatalf("%s is %s, not running", name, info.State.Status)
	}
	if p := info.HostConfig.RestartPolicy.Name; p != container.RestartPolicyUnlessStopped {
		t.Errorf("%s has the restart policy %q; want unless-stopped", name, p)
	}
	return info.ID
}

// TestDockerStartScriptHostHandover: the proxy container on the host
// network, started and then restarted twice by the same rendered script
// under load: no connection attempt fails, nothing is reset, every stream
// completes; each time the new container runs as NAME and the old one is
// gone, and the control socket they shared goes when the last one stops.
func TestDockerStartScriptHostHandover(t *testing.T) {
	img := proxyImage(t)
	tag := newTag(t, "v1")
	svc := startCtr(t, tag)
	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	name := prefix + "-host-proxy"
	sock := autoControlPath("127.0.0.1", []portMap{{host: uint16(port), container: 80}})
	cleanupProxyCtrs(t, name, sock)

	script := renderScript(t, "name="+name, "image="+img, "network_mode=host", "address=127.0.0.1",
		"ports="+strconv.Itoa(port)+"=80", "tag="+tag, "status_url=:80/status", "grace_period=1s",
		"shutdown_timeout=10s")
	if out := runScript(t, script); !strings.Contains(out, "started "+name) {
		t.Fatalf("the first run says %q; want a plain start", out)
	}
	waitServed(t, addr, svc, 20*time.Second)
	id := proxyCtr(t, name)
	if fi, err := os.Lstat(sock); err != nil || fi.Mode().Type() != fs.ModeSocket {
		t.Fatalf("the control socket %s on the host: %v", sock, err)
	}

	l := startRestartLoad(t, addr, 16, 4)
	eventually(t, 20*time.Second, "load flowing", func() bool { return l.ok.Load() > 50 && l.streams.Load() > 0 })
	for i := range 2 {
		before := l.ok.Load()
		out := runScript(t, script)
		if !strings.Contains(out, "without a gap") {
			t.Fatalf("restart %d: the script says %q; want a hand-over", i+1, out)
		}
		nu := proxyCtr(t, name)
		if nu == id {
			t.Fatalf("restart %d: %s is still the old container %s", i+1, name, shortID(id))
		}
		if ctrExists(t, id) {
			t.Errorf("restart %d: the old proxy container %s is still there", i+1, shortID(id))
		}
		if ctrExists(t, name+"-next") {
			t.Errorf("restart %d: %s-next is still there", i+1, name)
		}
		id = nu
		eventually(t, 20*time.Second, "requests through the new container", func() bool { return l.ok.Load() > before+50 })
	}
	l.stop()
	t.Logf("%d requests, %d streams of %d requests, %d failed, across 2 restarts through the start script",
		l.ok.Load(), l.streams.Load(), streamRequests, l.failed.Load())
	if l.failed.Load() > 0 {
		t.Errorf("%d requests or streams failed; first errors: %v", l.failed.Load(), l.errs)
	}
	waitServed(t, addr, svc, 10*time.Second)

	// The last proxy to stop removes the control socket from the host.
	secs := 20
	if err := dockerCli.ContainerStop(context.Background(), name, container.StopOptions{Timeout: &secs}); err != nil {
		t.Fatalf("stop %s: %v", name, err)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the control socket %s is still there after the last proxy stopped: %v", sock, err)
	}
}

// TestDockerStartScriptHostFallback: a proxy container on the host
// network that does not hand over (here: its control socket is off, as
// for an image older than the hand-over) is replaced plainly: the new one
// cannot bind the ports, exits, and the script says so, removes the old
// one and starts the new one as NAME.
func TestDockerStartScriptHostFallback(t *testing.T) {
	img := proxyImage(t)
	tag := newTag(t, "v1")
	svc := startCtr(t, tag)
	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	name := prefix + "-fallback-proxy"
	cleanupProxyCtrs(t, name, autoControlPath("127.0.0.1", []portMap{{host: uint16(port), container: 80}}))
	ctx := context.Background()
	created, err := dockerCli.ContainerCreate(ctx, &container.Config{
		Image:  img,
		Cmd:    []string{"-address", "127.0.0.1", "-ports", strconv.Itoa(port) + "=80", "-tag", tag, "-control", ""},
		Labels: map[string]string{testLabel: runID, pidLabel: ownPID},
	}, &container.HostConfig{
		NetworkMode: "host",
		Binds:       []string{"/var/run/docker.sock:/var/run/docker.sock"},
	}, nil, nil, name)
	if err != nil {
		t.Fatal(err)
	}
	if err := dockerCli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	waitServed(t, addr, svc, 20*time.Second)

	script := renderScript(t, "name="+name, "image="+img, "network_mode=host", "address=127.0.0.1",
		"ports="+strconv.Itoa(port)+"=80", "tag="+tag, "grace_period=1s")
	out := runScript(t, script)
	t.Logf("the script says:\n%s", out)
	if !strings.Contains(out, "could not take over") || !strings.Contains(out, "started "+name) {
		t.Errorf("the script says %q; want that it could not take over, and a plain start", out)
	}
	if nu := proxyCtr(t, name); nu == created.ID {
		t.Errorf("%s is still the old container", name)
	}
	if ctrExists(t, created.ID) || ctrExists(t, name+"-next") {
		t.Errorf("the old container or %s-next is still there", name)
	}
	waitServed(t, addr, svc, 20*time.Second)
}

// TestDockerStartScriptPublishedGap: with published ports a restart
// through the script has a gap; it is measured (failed attempts of
// clients that retry, and the longest a client waited) and logged. What
// must hold: the proxy serves again afterwards, as NAME, and the old
// container is gone.
func TestDockerStartScriptPublishedGap(t *testing.T) {
	img := proxyImage(t)
	tag := newTag(t, "v1")
	svc := startCtr(t, tag)
	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	name := prefix + "-published-proxy"
	cleanupProxyCtrs(t, name, "")

	script := renderScript(t, "name="+name, "image="+img, "address=127.0.0.1",
		"ports="+strconv.Itoa(port)+"=80", "tag="+tag, "status_url=:80/status", "grace_period=1s")
	runScript(t, script)
	waitServed(t, addr, svc, 20*time.Second)
	old := proxyCtr(t, name)

	l := startGapLoad(addr, 16)
	t.Cleanup(l.stop)
	eventually(t, 20*time.Second, "load flowing", func() bool { return l.ok.Load() > 50 })
	t0 := time.Now()
	out := runScript(t, script)
	took := time.Since(t0)
	before := l.ok.Load()
	eventually(t, 30*time.Second, "requests through the new container", func() bool { return l.ok.Load() > before+50 })
	l.stop()
	r := l.result()
	t.Logf("published ports, one restart through the script (%v): %d attempts by 16 clients retrying every %v, %d refused, %d reset or closed unanswered, %d other failures, from the first to the last %v; longest wait %v (one request %v, first failure to next answer %v); script: %q",
		took.Round(time.Millisecond), r.attempts, gapRetry, r.refused, r.reset, r.other, r.window.Round(time.Millisecond),
		r.longest().Round(time.Millisecond), r.longestRequest.Round(time.Millisecond), r.longestRetry.Round(time.Millisecond), strings.TrimSpace(out))
	if len(r.errs) > 0 {
		t.Logf("first failures: %v", r.errs)
	}

	waitServed(t, addr, svc, 20*time.Second)
	if nu := proxyCtr(t, name); nu == old {
		t.Errorf("%s is still the old container", name)
	}
	if ctrExists(t, old) {
		t.Errorf("the old proxy container %s is still there", shortID(old))
	}
	if ctrExists(t, name+"-next") {
		t.Errorf("%s-next is still there", name)
	}
}

// gapLoad is clients that each make one request per new connection, one
// after another, and retry gapRetry after a failure, as a client with a
// short back-off would: it counts refused and reset connections, the
// longest a client waited for an answer (one request, or from its first
// failure to the answer that ended the run of failures), and the window
// from the first failure of any client to the last.
type gapLoad struct {
	ok, attempts, refused, reset, other atomic.Int64

	mu             sync.Mutex
	longestRequest time.Duration
	longestRetry   time.Duration
	first, last    time.Time // failures
	errs           []error

	stopc chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

const (
	gapRetry       = 10 * time.Millisecond
	gapMaxAttempts = 500_000
	gapLoadMax     = 3 * time.Minute
)

// gapResult is what a gapLoad counted.
type gapResult struct {
	attempts, refused, reset, other int64
	longestRequest, longestRetry    time.Duration // one attempt; first failure to the next answer
	window                          time.Duration // first failure to last, all clients
	errs                            []error
}

// longest is the longest a client waited for an answer.
func (r gapResult) longest() time.Duration { return max(r.longestRequest, r.longestRetry) }

func startGapLoad(addr string, clients int) *gapLoad {
	l := &gapLoad{stopc: make(chan struct{})}
	deadline := time.Now().Add(gapLoadMax)
	running := func() bool {
		select {
		case <-l.stopc:
			return false
		default:
			return time.Now().Before(deadline) && l.attempts.Load() < gapMaxAttempts
		}
	}
	for range clients {
		l.wg.Go(func() {
			var since time.Time // the first failure of the current run of them
			for running() {
				l.attempts.Add(1)
				t0 := time.Now()
				err := oneRequest(addr)
				now := time.Now()
				l.waited(now.Sub(t0), 0)
				if err != nil {
					l.failed(err, t0, now)
					if since.IsZero() {
						since = t0
					}
					select {
					case <-l.stopc:
					case <-time.After(gapRetry):
					}
					continue
				}
				l.ok.Add(1)
				if !since.IsZero() {
					l.waited(0, now.Sub(since))
					since = time.Time{}
				}
			}
		})
	}
	return l
}

func (l *gapLoad) waited(request, retry time.Duration) {
	l.mu.Lock()
	l.longestRequest = max(l.longestRequest, request)
	l.longestRetry = max(l.longestRetry, retry)
	l.mu.Unlock()
}

// failed counts a failed attempt from t0 to t1.
func (l *gapLoad) failed(err error, t0, t1 time.Time) {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		l.refused.Add(1)
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, errUnanswered):
		l.reset.Add(1)
	default:
		l.other.Add(1)
	}
	l.mu.Lock()
	if l.first.IsZero() || t0.Before(l.first) {
		l.first = t0
	}
	if t1.After(l.last) {
		l.last = t1
	}
	if len(l.errs) < 3 {
		l.errs = append(l.errs, err)
	}
	l.mu.Unlock()
}

func (l *gapLoad) stop() {
	l.once.Do(func() { close(l.stopc) })
	l.wg.Wait()
}

func (l *gapLoad) result() gapResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	return gapResult{attempts: l.attempts.Load(), refused: l.refused.Load(), reset: l.reset.Load(),
		other: l.other.Load(), longestRequest: l.longestRequest, longestRetry: l.longestRetry,
		window: l.last.Sub(l.first), errs: l.errs}
}

// errUnanswered: the connection was accepted and closed with no answer.
var errUnanswered = errors.New("closed with no answer")

// oneRequest makes one HTTP/1.0 request on a new connection and reads the
// whole answer, which must be a 200.
func oneRequest(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\nHost: x\r\n\r\n"); err != nil {
		return err
	}
	b, err := io.ReadAll(io.LimitReader(c, 64<<10))
	switch {
	case err != nil:
		return err
	case len(b) == 0:
		return errUnanswered
	case !bytes.HasPrefix(b, []byte("HTTP/1.0 200")) && !bytes.HasPrefix(b, []byte("HTTP/1.1 200")):
		return errors.New("answer " + strconv.Quote(string(b[:min(len(b), 40)])))
	}
	return nil
}
