package main

// Regression tests of the flags, signals and the metrics listener under
// an unlucky operator or a hostile client.

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestEnvUnknownVariable: a misspelled DOCKER_PROXY_ variable was ignored,
// and the proxy ran without the setting.
func TestEnvUnknownVariable(t *testing.T) {
	t.Setenv("DOCKER_PROXY_PORTS", "80")
	t.Setenv("DOCKER_PROXY_TAG", "myapp")
	t.Setenv("DOCKER_PROXY_STATUSURL", ":80/health")
	_, err := parseFlags(nil, nil)
	if err == nil || !strings.Contains(err.Error(), "DOCKER_PROXY_STATUSURL") || !strings.Contains(err.Error(), "DOCKER_PROXY_STATUS_URL") {
		t.Fatalf("err = %v; want it to name DOCKER_PROXY_STATUSURL and suggest DOCKER_PROXY_STATUS_URL", err)
	}
	os.Unsetenv("DOCKER_PROXY_STATUSURL")
	t.Setenv("DOCKER_PROXY_NONSENSE", "1")
	if _, err := parseFlags(nil, nil); err == nil || !strings.Contains(err.Error(), "DOCKER_PROXY_NONSENSE") {
		t.Fatalf("err = %v; want it to name DOCKER_PROXY_NONSENSE", err)
	}
}

// TestBinaryUnknownEnvExits2: the same from the binary, with exit 2.
func TestBinaryUnknownEnvExits2(t *testing.T) {
	cmd := exec.Command(proxyBinary(t))
	cmd.Env = append(cleanEnv(), "DOCKER_PROXY_PORTS=80", "DOCKER_PROXY_TAG=x", "DOCKER_PROXY_GRACE=1s")
	out, err := outputWithin(t, cmd, 10*time.Second)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(out, "DOCKER_PROXY_GRACE") {
		t.Fatalf("exit %v, output %q; want status 2 naming DOCKER_PROXY_GRACE", err, out)
	}
}

// TestReplayBytesCap: -replay_bytes is capped, so that one setting cannot
// make every connection keep a large buffer.
func TestReplayBytesCap(t *testing.T) {
	wantFlagError(t, []string{"-ports", "80", "-tag", "x", "-replay_bytes", strconv.Itoa(maxReplayBytes + 1)}, "-replay_bytes")
	cfg, err := parseFlags([]string{"-ports", "80", "-tag", "x", "-replay_bytes", strconv.Itoa(maxReplayBytes)}, nil)
	if err != nil || cfg.replayBytes != maxReplayBytes {
		t.Fatalf("at the cap: %v, %d", err, cfg.replayBytes)
	}
}

// acceptedOn counts the established sockets of this process from port to
// one of clients: /proc/net/tcp lines with those ports whose inode is one
// of this process's descriptors (one still in the accept queue has none,
// and other processes' sockets are not ours).
func acceptedOn(t testing.TB, port int, clients map[int]bool) int {
	t.Helper()
	ours := map[string]bool{}
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil {
			if ino, ok := strings.CutPrefix(l, "socket:["); ok {
				ours[strings.TrimSuffix(ino, "]")] = true
			}
		}
	}
	n := 0
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "01" || !ours[f[9]] {
				continue
			}
			_, local, _ := strings.Cut(f[1], ":")
			_, remote, _ := strings.Cut(f[2], ":")
			lp, err1 := strconv.ParseInt(local, 16, 32)
			rp, err2 := strconv.ParseInt(remote, 16, 32)
			if err1 == nil && err2 == nil && int(lp) == port && clients[int(rp)] {
				n++
			}
		}
	}
	return n
}

// TestMetricsIdleClientsDoNotStarve: idle keep-alive clients of the
// metrics listener were kept for ever, with no cap, until the process ran
// out of file descriptors and the data ports failed. The listener now
// holds at most metricsMaxConns; the rest wait in the kernel's backlog.
func TestMetricsIdleClientsDoNotStarve(t *testing.T) {
	if _, err := os.Stat("/proc/net/tcp"); err != nil {
		t.Skipf("no /proc/net/tcp: %v", err)
	}
	ln, err := listenMetrics("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	serveMetricsFor(t, ln, slog.New(slog.DiscardHandler))

	const idle = 200
	clients := map[int]bool{}
	for range idle {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients[c.LocalAddr().(*net.TCPAddr).Port] = true
	}
	waitUntil(t, 5*time.Second, "the server at its cap", func() bool { return acceptedOn(t, port, clients) >= metricsMaxConns })
	for range 10 { // and never past it, while the clients stay
		if n := acceptedOn(t, port, clients); n > metricsMaxConns {
			t.Fatalf("the metrics server holds %d idle connections; want at most %d", n, metricsMaxConns)
		}
	}
}

// serveMetricsFor serves the metrics on ln until the test ends.
func serveMetricsFor(t testing.TB, ln net.Listener, log *slog.Logger) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var snap atomic.Pointer[status]
	var connected atomic.Bool
	go func() { done <- serveMetrics(ctx, ln, newMetrics(nil), &snap, &connected, log) }()
	t.Cleanup(func() { cancel(); <-done })
}

// TestMetricsAddressUnusable: a -metrics_address that could not be bound
// was only logged, and the proxy ran on blind. serve now fails.
func TestMetricsAddressUnusable(t *testing.T) {
	taken := listenLoopback(t)
	defer taken.Close()
	for _, addr := range []string{taken.Addr().String(), "no-such-host.invalid:9100"} {
		cfg := testConfig("myapp", portMap{host: 1, container: 1})
		cfg.metricsAddr = addr
		err := serve(context.Background(), nil, cfg, nil, []*net.TCPListener{listenLoopback(t)}, slog.New(slog.DiscardHandler))
		if err == nil || !strings.Contains(err.Error(), addr) {
			t.Errorf("-metrics_address %s: serve returned %v; want an error naming it", addr, err)
		}
	}
}

// flakyListener fails its first Accept with a temporary error.
type flakyListener struct {
	net.Listener
	failed atomic.Bool
}

type tempErr struct{}

func (tempErr) Error() string   { return "temporary trouble" }
func (tempErr) Timeout() bool   { return false }
func (tempErr) Temporary() bool { return true }

func (l *flakyListener) Accept() (net.Conn, error) {
	if !l.failed.Swap(true) {
		return nil, tempErr{}
	}
	return l.Listener.Accept()
}

// TestMetricsServerLogsThroughSlog: net/http's own error lines bypassed
// slog and -log_format json.
func TestMetricsServerLogsThroughSlog(t *testing.T) {
	var logs logBuffer
	ln := &flakyListener{Listener: listenLoopback(t)}
	serveMetricsFor(t, ln, slog.New(slog.NewJSONHandler(&logs, nil)))
	waitUntil(t, 5*time.Second, "net/http's accept error in the JSON log", func() bool {
		return strings.Contains(logs.String(), `"msg":"http: Accept error: temporary trouble`)
	})
}

// TestDockerTLSUnverifiedWarns: DOCKER_CERT_PATH without DOCKER_TLS_VERIFY
// makes the Docker client skip verifying the daemon's certificate; the
// docker CLI's users expect to be told.
func TestDockerTLSUnverifiedWarns(t *testing.T) {
	t.Setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
	t.Setenv("DOCKER_CERT_PATH", t.TempDir())
	t.Setenv("DOCKER_TLS_VERIFY", "")
	var logs logBuffer
	cfg := testConfig("myapp", portMap{host: 1, container: 1})
	_ = run(context.Background(), nil, cfg, slog.New(slog.NewJSONHandler(&logs, nil)))
	if !strings.Contains(logs.String(), "DOCKER_TLS_VERIFY") {
		t.Fatalf("no warning about an unverified Docker API certificate; log:\n%s", logs.String())
	}
}

// TestDockerBinarySignals: SIGHUP killed the proxy (exit 129); a second
// SIGTERM was ignored while the first waited for open connections. Now
// SIGHUP is logged and ignored, and a second signal closes every
// connection and exits at once.
func TestDockerBinarySignals(t *testing.T) {
	tag := newTag(t, "v1")
	svc := startCtr(t, tag, "-echo", ":7000")
	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	pp := startBinary(t, "", "-address", "127.0.0.1", "-ports", strconv.Itoa(port)+"=7000",
		"-tag", tag, "-shutdown_timeout", "10m", "-hold_timeout", "0")
	eventually(t, 15*time.Second, "the proxy serving", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte("x")); err != nil {
			return false
		}
		b := make([]byte, 1)
		_, err = c.Read(b)
		return err == nil
	})
	if err := pp.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	pp.logs.waitLog(t, 5*time.Second, "SIGHUP ignored: restart docker-proxy to change its settings (SIGUSR2 restarts it without a gap)")
	c := dialTCP(t, addr)
	echoRound(t, c, "still serving after SIGHUP")

	_ = pp.cmd.Process.Signal(syscall.SIGTERM)
	pp.logs.waitLog(t, 5*time.Second, "no new connections; open ones may finish")
	select {
	case <-pp.exited:
		t.Fatalf("exited with a connection open and -shutdown_timeout 10m: %v", pp.err)
	default:
	}
	echoRound(t, c, "open connections keep working")
	_ = pp.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-pp.exited:
		if pp.err != nil {
			t.Fatalf("exit after the second signal: %v; want status 0", pp.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("still running 5s after the second SIGTERM")
	}
	expectClosed(t, c, 2*time.Second)
	_ = svc
}

// TestMetricsKeepAliveClientsCannotLockOut: 32 clients that made one
// request each and idled on keep-alive held every metrics connection, and
// the scraper (and /healthz) got nothing.
func TestMetricsKeepAliveClientsCannotLockOut(t *testing.T) {
	ln, err := listenMetrics("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	serveMetricsFor(t, ln, slog.New(slog.DiscardHandler))
	get := func(c net.Conn) error {
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.Body.Close()
	}
	for i := range metricsMaxConns + 1 { // one request each, then idle
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := get(c); err != nil {
			t.Fatalf("client %d, with %d idle keep-alive clients before it: %v", i, i, err)
		}
	}
}

// TestMetricsAddressIPv4Only: -metrics_address 0.0.0.0:P listened on [::]
// too, unlike the data ports.
func TestMetricsAddressIPv4Only(t *testing.T) {
	if ln6, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	} else {
		_ = ln6.Close()
	}
	ln, err := listenMetrics("0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	if c, err := net.DialTimeout("tcp6", net.JoinHostPort("::1", strconv.Itoa(port)), time.Second); err == nil {
		_ = c.Close()
		t.Fatalf("-metrics_address 0.0.0.0:%d is reachable on [::1]:%d", port, port)
	}
}
