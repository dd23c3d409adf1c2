package main

// docker-proxy wait and status against a proxy binary and the real daemon:
// a good deploy, one never ready, one that crashes after serving, and a
// proxy that is not there.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ctlProxy is a docker-proxy binary with its control socket.
type ctlProxy struct {
	*procProxy
	addr    string // 127.0.0.1:port of its one data port
	control string
	args    []string
}

// startCtlProxy runs the proxy binary for tag on one free port with its
// control socket in a temporary folder, and waits until the socket
// answers.
func startCtlProxy(t testing.TB, tag string, args ...string) ctlProxy {
	t.Helper()
	port := freePort(t)
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	args = append([]string{"-address", "127.0.0.1", "-ports", strconv.Itoa(port) + "=80", "-tag", tag,
		"-status_url", ":80/status", "-control", sock}, args...)
	p := ctlProxy{procProxy: startBinary(t, "", args...), addr: "127.0.0.1:" + strconv.Itoa(port), control: sock, args: args}
	eventually(t, 10*time.Second, "the control socket answers", func() bool {
		_, err := newCtlClient(sock).status(context.Background())
		return err == nil
	})
	return p
}

// successor starts another proxy binary with p's flags: it takes over
// from p. It returns once the new one says so.
func (p ctlProxy) successor(t testing.TB) ctlProxy {
	t.Helper()
	n := p
	n.procProxy = startBinary(t, "", p.args...)
	n.logs.waitLog(t, 20*time.Second, "took over from the running proxy")
	return n
}

// status reads the proxy's status document.
func (p ctlProxy) status(t testing.TB) *status {
	t.Helper()
	s, err := newCtlClient(p.control).status(context.Background())
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	return s
}

// cmdResult is a finished subcommand.
type cmdResult struct {
	stdout, stderr string
	code           int
}

// runCmd runs the docker-proxy binary with args, bounded by timeout.
func runCmd(t testing.TB, timeout time.Duration, args ...string) cmdResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, proxyBinary(t), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := cmdResult{stdout.String(), stderr.String(), 0}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("docker-proxy %s: still running after %v; stderr:\n%s", strings.Join(args, " "), timeout, r.stderr)
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return r
}

// startWait runs docker-proxy wait in the background; the result comes on
// the channel.
func startWait(t testing.TB, timeout time.Duration, args ...string) <-chan cmdResult {
	t.Helper()
	bin := proxyBinary(t)
	ch := make(chan cmdResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, append([]string{"wait"}, args...)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		r := cmdResult{stdout.String(), stderr.String(), 0}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			r.code = ee.ExitCode()
		} else if err != nil {
			r.code = -1
		}
		ch <- r
	}()
	return ch
}

func wantCode(t testing.TB, r cmdResult, code int, what string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("%s: exit %d; want %d\nstdout:\n%s\nstderr:\n%s", what, r.code, code, r.stdout, r.stderr)
	}
}

// jsonEvents reads -json's lines.
func jsonEvents(t testing.TB, out string) []deployEvent {
	t.Helper()
	var evs []deployEvent
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var e deployEvent
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("-json line %q: %v", l, err)
		}
		evs = append(evs, e)
	}
	return evs
}

func hasEvent(evs []deployEvent, typ, id string) bool {
	for _, e := range evs {
		if e.Type == typ && e.ID == id {
			return true
		}
	}
	return false
}

// TestDockerWaitGoodDeploy: wait exits 0 once the new container serves and
// the old one is removed, not before; -json gives the events.
func TestDockerWaitGoodDeploy(t *testing.T) {
	tag := newTag(t, "v1")
	old := startCtr(t, tag)
	p := startCtlProxy(t, tag, "-grace_period", "2s")
	waitServed(t, p.addr, old, 10*time.Second)

	nu := startCtr(t, tag, "-ready_after", "1s")
	r := runCmd(t, time.Minute, "wait", "-control", p.control, "-json", nu.id[:12])
	wantCode(t, r, exitOK, "wait on a good deploy")
	t.Logf("wait's stderr:\n%s", r.stderr)
	if ctrExists(t, old.id) {
		t.Errorf("wait exited 0 while the old container %s still exists", old.short())
	}
	if got := whoAnswers(t, p.addr); got != nu.host {
		t.Errorf("after wait, %s answers; want the new container %s", got, nu.host)
	}
	evs := jsonEvents(t, r.stdout)
	if !hasEvent(evs, evtSwap, nu.id) || !hasEvent(evs, evtRetired, old.id) {
		t.Errorf("-json events lack the swap to %s or the retirement of %s:\n%s", nu.short(), old.short(), r.stdout)
	}
	if !strings.Contains(r.stderr, "serves; the container it replaced is retired") {
		t.Errorf("stderr does not say the deploy is done:\n%s", r.stderr)
	}

	// Waiting again, after the fact, by name: done at once.
	name := ctrName(t, nu.id)
	wantCode(t, runCmd(t, 20*time.Second, "wait", "-control", p.control, name), exitOK, "wait after the deploy, by name")
}

func ctrName(t testing.TB, id string) string {
	t.Helper()
	info, err := dockerCli.ContainerInspect(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(info.Name, "/")
}

// TestDockerWaitNeverReady: a container that never answers its status URL
// is ignored at -status_timeout, and wait exits 1 with the readiness error.
func TestDockerWaitNeverReady(t *testing.T) {
	tag := newTag(t, "v1")
	old := startCtr(t, tag)
	p := startCtlProxy(t, tag, "-status_timeout", "3s", "-grace_period", "1s")
	waitServed(t, p.addr, old, 10*time.Second)

	bad := startCtr(t, tag, "-fail_status")
	r := runCmd(t, time.Minute, "wait", "-control", p.control, bad.id)
	wantCode(t, r, exitFailed, "wait on a container never ready")
	t.Logf("wait's stderr:\n%s", r.stderr)
	if !strings.Contains(r.stderr, "was ignored: not ready within -status_timeout 3s") || !strings.Contains(r.stderr, "500") {
		t.Errorf("stderr does not name the ignore and the readiness error (a 500):\n%s", r.stderr)
	}
	if got := whoAnswers(t, p.addr); got != old.host {
		t.Errorf("%s answers; want the old container %s still", got, old.host)
	}
}

// TestDockerWaitRollback: a new container that serves and then dies,
// inside the old one's grace period, is rolled back from: wait exits 1.
func TestDockerWaitRollback(t *testing.T) {
	tag := newTag(t, "v1")
	old := startCtr(t, tag)
	p := startCtlProxy(t, tag, "-grace_period", "60s")
	waitServed(t, p.addr, old, 10*time.Second)

	nu := startCtr(t, tag)
	done := startWait(t, time.Minute, "-control", p.control, nu.id)
	waitServed(t, p.addr, nu, 10*time.Second)
	eventually(t, 10*time.Second, "the old container is ready to roll back to", func() bool {
		s := p.status(t)
		return len(s.Draining) == 1 && s.Draining[0].Ready
	})
	if err := dockerCli.ContainerKill(context.Background(), nu.id, "KILL"); err != nil {
		t.Fatal(err)
	}
	var r cmdResult
	select {
	case r = <-done:
	case <-time.After(time.Minute):
		t.Fatal("wait did not return after the rollback")
	}
	wantCode(t, r, exitFailed, "wait on a container rolled back from")
	t.Logf("wait's stderr:\n%s", r.stderr)
	if !strings.Contains(r.stderr, "rolled back") {
		t.Errorf("stderr does not say rolled back:\n%s", r.stderr)
	}
	waitServed(t, p.addr, old, 10*time.Second)
}

// TestDockerStatusDuringDeploy: status shows the new container checking,
// then serving, and the old one draining with its open connections and
// the time left.
func TestDockerStatusDuringDeploy(t *testing.T) {
	tag := newTag(t, "v1")
	old := startCtr(t, tag)
	p := startCtlProxy(t, tag, "-grace_period", "60s")
	waitServed(t, p.addr, old, 10*time.Second)

	// Load: 3 connections held open to the old container, and a bounded
	// loop of short ones throughout.
	for range 3 {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := fmt.Fprintf(c, "GET /status HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "3 connections to the old container", func() bool {
		s := p.status(t)
		return s.Serving != nil && s.Serving.Connections >= 3
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	loadDone := make(chan int)
	go func() {
		n := 0
		for i := 0; i < 2000 && ctx.Err() == nil; i++ {
			if _, err := httpGet(p.addr, "/"); err == nil {
				n++
			}
		}
		loadDone <- n
	}()

	nu := startCtr(t, tag, "-ready_after", "3s")
	eventually(t, 10*time.Second, "status shows the new container checking", func() bool {
		r := runCmd(t, 10*time.Second, "status", "-control", p.control)
		return r.code == 0 && strings.Contains(r.stdout, "checking  "+nu.short()) && strings.Contains(r.stdout, "serving   "+old.short())
	})
	eventually(t, 20*time.Second, "status shows the old one draining with 3 open connections", func() bool {
		r := runCmd(t, 10*time.Second, "status", "-control", p.control)
		return r.code == 0 && strings.Contains(r.stdout, "serving   "+nu.short()) &&
			strings.Contains(r.stdout, "draining  "+old.short()) && strings.Contains(r.stdout, "3 open connections, retired in ")
	})
	r := runCmd(t, 10*time.Second, "status", "-control", p.control, "-json")
	wantCode(t, r, exitOK, "status -json")
	var s status
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatalf("status -json: %v\n%s", err, r.stdout)
	}
	if s.Serving == nil || s.Serving.ID != nu.id || len(s.Draining) != 1 || s.Draining[0].Connections != 3 || s.Draining[0].DeadlineIn <= 0 {
		t.Errorf("status -json: got %+v; want %s serving and %s draining with 3 connections and time left", s, nu.short(), old.short())
	}
	cancel()
	if n := <-loadDone; n == 0 {
		t.Error("no request of the load loop got an answer")
	}
}

// TestDockerWaitBadInput: an unknown container and one the proxy does not
// select exit 2 with one line.
func TestDockerWaitBadInput(t *testing.T) {
	tag := newTag(t, "v1")
	other := newTag(t, "other")
	old := startCtr(t, tag)
	stranger := startCtr(t, other)
	p := startCtlProxy(t, tag)
	waitServed(t, p.addr, old, 10*time.Second)

	r := runCmd(t, 20*time.Second, "wait", "-control", p.control, prefix+"-no-such-container")
	wantCode(t, r, exitUsage, "wait on an unknown container")
	if !strings.Contains(r.stderr, "no such container") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
		t.Errorf("want one line naming the unknown container; got:\n%s", r.stderr)
	}
	r = runCmd(t, 20*time.Second, "wait", "-control", p.control, stranger.id)
	wantCode(t, r, exitUsage, "wait on a container of another image")
	if !strings.Contains(r.stderr, "is not a container this proxy serves") {
		t.Errorf("want a line saying the proxy does not serve it; got:\n%s", r.stderr)
	}
}

// TestWaitNoProxy: no socket, a socket nobody listens on, and one that is
// not a docker-proxy's.
func TestWaitNoProxy(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.sock")
	r := runCmd(t, 20*time.Second, "wait", "-control", missing, "abc")
	wantCode(t, r, exitUnknown, "wait with no proxy")
	if !strings.Contains(r.stderr, "no docker-proxy answers on "+missing) {
		t.Errorf("stderr does not say no proxy answers:\n%s", r.stderr)
	}
	wantCode(t, runCmd(t, 20*time.Second, "status", "-control", missing), exitUnknown, "status with no proxy")

	other := filepath.Join(dir, "other.sock")
	ln, err := net.Listen("unix", other)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"hello":"world"}`))
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	r = runCmd(t, 20*time.Second, "wait", "-control", other, "abc")
	wantCode(t, r, exitUsage, "wait against a socket that is not a docker-proxy")
	if !strings.Contains(r.stderr, "is not a docker-proxy control socket") {
		t.Errorf("stderr does not say it is not a docker-proxy:\n%s", r.stderr)
	}

	garbage := filepath.Join(dir, "garbage.sock")
	gl, err := net.Listen("unix", garbage)
	if err != nil {
		t.Fatal(err)
	}
	defer gl.Close()
	go func() {
		for {
			c, err := gl.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("SSH-2.0-OpenSSH\r\n"))
			_ = c.Close()
		}
	}()
	wantCode(t, runCmd(t, 20*time.Second, "status", "-control", garbage), exitUsage, "status against a socket speaking no HTTP")
}

// TestCommandUsage: bad flags and arguments exit 2 with one line; -h
// exits 0.
func TestCommandUsage(t *testing.T) {
	for _, args := range [][]string{
		{"wait"},
		{"wait", "a", "b"},
		{"wait", "-bogus", "x"},
		{"wait", "-timeout", "soon", "x"},
		{"status", "extra"},
		{"deploy", "-env", "NOEQUALS"},
		{"deploy", "extra"},
		{"status", "-ports", "80=http"},
	} {
		r := runCmd(t, 20*time.Second, args...)
		if r.code != exitUsage || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || r.stderr == "" {
			t.Errorf("%v: exit %d, stderr %q; want 2 and one line", args, r.code, r.stderr)
		}
	}
	for _, cmd := range []string{"wait", "deploy", "status"} {
		r := runCmd(t, 20*time.Second, cmd, "-h")
		if r.code != 0 || !strings.Contains(r.stderr, "Usage: docker-proxy "+cmd) {
			t.Errorf("%s -h: exit %d; want 0 and the usage:\n%s", cmd, r.code, r.stderr)
		}
	}
}
