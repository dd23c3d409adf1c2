package main

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestParseFlagsDefaults(t *testing.T) {
	cfg, err := parseFlags([]string{"-tag", "myapp", "-ports", "80,443=3000"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := config{
		address: "0.0.0.0", docker: "", // not given: DOCKER_HOST, else the default socket
		ports:         []portMap{{80, 80}, {443, 3000}},
		logFormat:     "text",
		statusTimeout: 10 * time.Second, tag: "myapp", grace: 10 * time.Second,
		hold: 5 * time.Second, retire: retireRemove, shutdown: 10 * time.Second,
		replayBytes: defaultReplayBytes, control: controlAuto,
	}
	if got := cfg; !equalConfig(got, want) {
		t.Errorf("got %+v; want %+v", got, want)
	}
}

func equalConfig(a, b config) bool {
	return reflect.DeepEqual(a, b)
}

func TestParseFlagsAll(t *testing.T) {
	cfg, err := parseFlags([]string{
		"-address", "127.0.0.1", "-docker", "tcp://127.0.0.1:2375", "-ports", "8080=80",
		"-status_url", ":80/server-status", "-status_timeout", "3s", "-tag", "docker.io/library/web:v2",
		"-grace_period", "0", "-hold_timeout", "0", "-drain", "-stop_timeout", "2s", "-retire", "stop",
		"-shutdown_timeout", "1s", "-max_conns", "100", "-replay_bytes", "0", "-control", "/tmp/x.sock",
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := config{
		address: "127.0.0.1", docker: "tcp://127.0.0.1:2375", ports: []portMap{{8080, 80}},
		statusURL: statusURL{port: 80, uri: "/server-status"}, statusTimeout: 3 * time.Second,
		tag: "docker.io/library/web:v2", hold: 0, drain: true, stopTimeout: 2 * time.Second,
		retire: retireStop, shutdown: time.Second, maxConns: 100, logFormat: "text", control: "/tmp/x.sock",
	}
	if !equalConfig(cfg, want) {
		t.Errorf("got %+v; want %+v", cfg, want)
	}
}

// TestParseFlagsErrors: every bad value is named in the one error line.
func TestParseFlagsErrors(t *testing.T) {
	base := []string{"-tag", "myapp", "-ports", "80"}
	tests := []struct {
		args []string
		want string // in the error
	}{
		{[]string{"-ports", "80"}, "missing -tag"},
		{[]string{"-tag", "myapp"}, "missing -ports"},
		{append(base, "-ports", "abc"), `"abc"`},
		{append(base, "-ports", "0"), `"0"`},
		{append(base, "-ports", "70000"), `"70000"`},
		{append(base, "-ports", "80="), `"80="`},
		{append(base, "-ports", "80,,81"), "empty item"},
		{append(base, "-ports", "80,80=3000"), "listed twice"},
		{append(base, "-ports", ""), "empty item"},
		{append(base, "-grace_period", "soon"), `"soon"`},
		{append(base, "-grace_period", "-1s"), `"-1s"`},
		{append(base, "-status_timeout", "10"), `"10"`},
		{append(base, "-status_url", "80/status"), `"80/status"`},
		{append(base, "-status_url", "http://x/status"), `"http://x/status"`},
		{append(base, "-retire", "kill"), `"kill"`},
		{append(base, "-max_conns", "-1"), "-max_conns -1"},
		{append(base, "-address", "nowhere"), `"nowhere"`},
		{append(base, "-docker", "ftp://x"), `"ftp://x"`},
		{append(base, "extra"), `"extra"`},
		{append(base, "-nope"), "-nope"},
		{[]string{"-ports", "80", "-tag", "Not A Tag"}, `"Not A Tag"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) { wantFlagError(t, tt.args, tt.want) })
	}
}

// wantFlagError checks that args fail to parse with one line naming want.
func wantFlagError(t *testing.T, args []string, want string) {
	t.Helper()
	_, err := parseFlags(args, io.Discard)
	if err == nil {
		t.Fatalf("no error; want one containing %s", want)
	}
	if !strings.Contains(err.Error(), want) {
		t.Errorf("got %q; want it to contain %s", err, want)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("got %q; want one line", err)
	}
}

func TestParseFlagsHelp(t *testing.T) {
	var out bytes.Buffer
	_, err := parseFlags([]string{"-h"}, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("got %v; want flag.ErrHelp", err)
	}
	for _, want := range []string{
		"-address address", `(default "0.0.0.0")`, "-docker URL", `(default "unix:///var/run/docker.sock")`,
		"-ports ports", "-status_url :PORT/URI", "-status_timeout", "(default 10s)", "-tag reference",
		"-grace_period", "-hold_timeout", "(default 5s)",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("-h output lacks %q:\n%s", want, out.String())
		}
	}
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// proxyBinary builds the docker-proxy binary once per test run.
func proxyBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "dockerproxy-bin")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "docker-proxy")
		binErr = goBuild(binPath, ".")
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// TestBinaryUsageErrors: bad input exits 2 at once with one line on stderr
// naming the bad value.
func TestBinaryUsageErrors(t *testing.T) {
	bin := proxyBinary(t)
	for _, args := range [][]string{
		{"-tag", "myapp", "-ports", "abc"},
		{"-tag", "myapp", "-ports", "80", "-grace_period", "-5s"},
		{"-ports", "80"},
	} {
		cmd := exec.Command(bin, args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("%v: got %v; want exit status 2", args, err)
		}
		if lines := strings.Count(stderr.String(), "\n"); lines != 1 {
			t.Errorf("%v: stderr has %d lines; want 1:\n%s", args, lines, stderr.String())
		}
	}
}

func TestBinaryHelpExitsZero(t *testing.T) {
	out, err := exec.Command(proxyBinary(t), "-h").CombinedOutput()
	if err != nil {
		t.Fatalf("-h: %v", err)
	}
	if !strings.Contains(string(out), "-grace_period") {
		t.Errorf("-h output lacks -grace_period:\n%s", out)
	}
}

func TestBinaryUnreachableDaemon(t *testing.T) {
	url := "unix://" + filepath.Join(t.TempDir(), "no-docker.sock")
	cmd := exec.Command(proxyBinary(t), "-tag", "myapp", "-ports", "80", "-docker", url)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("got %v; want exit status 1", err)
	}
	if !strings.Contains(string(out), url) {
		t.Errorf("output does not name %s:\n%s", url, out)
	}
}

// TestDockerBinarySIGTERM: on SIGTERM the proxy stops accepting, lets an
// in-flight request finish, exits 0 and removes no container.
func TestDockerBinarySIGTERM(t *testing.T) {
	r := sigtermWithRequest(t, "10s", 1500)
	if err := <-r.slow; err != nil {
		t.Fatalf("in-flight request across SIGTERM: %v", err)
	}
	r.wantExitZero(t, 15*time.Second)
	if _, err := httpGet(r.addr, "/"); err == nil {
		t.Error("the port still accepts after exit")
	}
	if !ctrRunning(t, r.svc.id) {
		t.Error("the proxy removed its container on the way out")
	}
}

// sigtermRun is the binary, serving a container, sent SIGTERM while it
// carries a slow request.
type sigtermRun struct {
	pp   *procProxy
	addr string
	svc  testCtr
	slow chan error // the slow request's outcome
}

// sigtermWithRequest starts the binary with -shutdown_timeout shutdown,
// sends a request that takes ms milliseconds, and signals SIGTERM once the
// proxy carries it.
func sigtermWithRequest(t *testing.T, shutdown string, ms int) sigtermRun {
	t.Helper()
	tag := newTag(t, "v1")
	r := sigtermRun{svc: startCtr(t, tag), slow: make(chan error, 1)}
	port := freePort(t)
	r.addr = "127.0.0.1:" + strconv.Itoa(port)
	r.pp = startBinary(t, "", "-address", "127.0.0.1", "-ports", strconv.Itoa(port)+"=80",
		"-tag", tag, "-shutdown_timeout", shutdown)
	waitServed(t, r.addr, r.svc, 10*time.Second)
	go func() {
		body, err := httpGet(r.addr, "/slow?ms="+strconv.Itoa(ms))
		if err == nil && body != r.svc.host {
			err = errors.New("answered by " + body)
		}
		r.slow <- err
	}()
	eventually(t, 5*time.Second, "request in flight", func() bool {
		return strings.Contains(connectionsTo(t, r.svc), "ESTAB")
	})
	if err := r.pp.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	return r
}

// wantExitZero waits for the proxy to exit with status 0.
func (r sigtermRun) wantExitZero(t *testing.T, within time.Duration) {
	t.Helper()
	select {
	case <-r.pp.exited:
		if r.pp.err != nil {
			t.Fatalf("exit: %v; want status 0", r.pp.err)
		}
	case <-time.After(within):
		t.Fatal("the proxy did not exit after SIGTERM")
	}
}

// connectionsTo lists the TCP connections to c's address on port 80, as ss
// prints them (the proxy's side of a forwarded connection).
func connectionsTo(t testing.TB, c testCtr) string {
	t.Helper()
	out, err := exec.Command("ss", "-tn", "dst", c.ip.String()+":80").Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	return string(out)
}

// procProxy is the docker-proxy binary running as a child process, logging
// JSON lines at debug level.
type procProxy struct {
	cmd    *exec.Cmd
	logs   *logBuffer
	exited chan struct{}
	err    error // set once exited is closed
}

// startBinary runs the binary with args; with a shell prefix such as
// "ulimit -n 64;", through bash. It is killed when the test ends.
func startBinary(t testing.TB, shell string, args ...string) *procProxy {
	t.Helper()
	// The control socket in the test's folder, not /run/docker-proxy,
	// where a killed process would leave it behind (args may override).
	args = append([]string{"-log_format", "json", "-log_level", "debug", "-control", filepath.Join(t.TempDir(), "ctl.sock")}, args...)
	cmd := exec.Command(proxyBinary(t), args...)
	if shell != "" {
		cmd = exec.Command("bash", append([]string{"-c", shell + ` exec "$0" "$@"`, proxyBinary(t)}, args...)...)
	}
	return runBinary(t, cmd)
}

// runBinary starts cmd, a docker-proxy process, collecting its log lines;
// it is killed when the test ends.
func runBinary(t testing.TB, cmd *exec.Cmd) *procProxy {
	t.Helper()
	pp := &procProxy{cmd: cmd, logs: &logBuffer{}, exited: make(chan struct{})}
	cmd.Stderr = pp.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { pp.err = cmd.Wait(); close(pp.exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-pp.exited
		if t.Failed() {
			t.Logf("proxy log:\n%s", pp.logs.String())
		}
	})
	return pp
}

// TestDockerBinarySIGTERMClosesTheRest: a request still in flight when
// -shutdown_timeout runs out is closed, and the proxy exits 0.
func TestDockerBinarySIGTERMClosesTheRest(t *testing.T) {
	r := sigtermWithRequest(t, "1s", 20000)
	select {
	case err := <-r.slow:
		if err == nil {
			t.Fatal("the 20s request finished; want it cut after the 1s shutdown timeout")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the request was not closed 10s after SIGTERM with -shutdown_timeout 1s")
	}
	r.wantExitZero(t, 10*time.Second)
	r.pp.logs.waitLog(t, time.Second, "shutdown: closed open connections", "closed", "1")
}
