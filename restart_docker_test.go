package main

// Restarts of the proxy itself without a gap (see handover.go), against
// proxy binaries and the real daemon.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
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
)

// restartLoad is load for restarts: workers that make a new connection per
// request, and streams: keep-alive connections of streamRequests requests
// each, short enough to finish inside -shutdown_timeout.
type restartLoad struct {
	ok, failed, streams atomic.Int64
	mu                  sync.Mutex
	errs                []error
	stopc               chan struct{}
	wg                  sync.WaitGroup
}

const (
	streamRequests = 20 // of 50ms each: a stream lasts about a second
	restartLoadMax = 3 * time.Minute
)

func startRestartLoad(t testing.TB, addr string, short, streams int) *restartLoad {
	l := &restartLoad{stopc: make(chan struct{})}
	deadline := time.Now().Add(restartLoadMax)
	fail := func(err error) {
		l.failed.Add(1)
		l.mu.Lock()
		if len(l.errs) < 5 {
			l.errs = append(l.errs, err)
		}
		l.mu.Unlock()
	}
	running := func() bool {
		select {
		case <-l.stopc:
			return false
		default:
			return time.Now().Before(deadline)
		}
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	for range short {
		l.wg.Go(func() {
			for running() {
				if err := getOK(client, "http://"+addr+"/"); err != nil {
					fail(err)
					continue
				}
				l.ok.Add(1)
			}
		})
	}
	for range streams {
		l.wg.Go(func() {
			for running() {
				if err := stream(addr); err != nil {
					fail(err)
					continue
				}
				l.streams.Add(1)
			}
		})
	}
	t.Cleanup(l.stop)
	return l
}

// stream sends streamRequests requests on one connection, each after the
// answer to the last, and checks every answer.
func stream(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	for i := range streamRequests {
		if _, err := fmt.Fprintf(c, "GET /slow?ms=50 HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			return fmt.Errorf("stream request %d: %w", i, err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return fmt.Errorf("stream answer %d: %w", i, err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			return fmt.Errorf("stream answer %d: %s %v", i, resp.Status, err)
		}
	}
	return nil
}

func (l *restartLoad) stop() {
	select {
	case <-l.stopc:
	default:
		close(l.stopc)
	}
	l.wg.Wait()
}

// TestDockerRestartsUnderLoad: five restarts of the proxy, each a new
// process taking over from the running one, under load: no connection
// attempt fails, nothing is reset, every stream completes, and each old
// process exits 0 once its connections are done.
func TestDockerRestartsUnderLoad(t *testing.T) {
	tag := newTag(t, "v1")
	c := startCtr(t, tag)
	metrics := "127.0.0.1:" + strconv.Itoa(freePort(t))
	p := startCtlProxy(t, tag, "-shutdown_timeout", "10s", "-metrics_address", metrics)
	waitServed(t, p.addr, c, 10*time.Second)

	l := startRestartLoad(t, p.addr, 16, 4)
	eventually(t, 10*time.Second, "load flowing", func() bool { return l.ok.Load() > 50 && l.streams.Load() > 0 })
	for i := range 5 {
		before := l.ok.Load()
		n := p.successor(t)
		p.logs.waitLog(t, 10*time.Second, "handed over to a new process: no new connections here; open ones may finish")
		select {
		case <-p.exited:
			if p.err != nil {
				t.Fatalf("restart %d: the old process exited: %v", i+1, p.err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("restart %d: the old process did not exit", i+1)
		}
		eventually(t, 10*time.Second, "requests through the new process", func() bool { return l.ok.Load() > before+50 })
		if s := n.status(t); s.Serving == nil || s.Serving.ID != c.id {
			t.Fatalf("restart %d: the new process serves %+v; want %s", i+1, s.Serving, c.short())
		}
		if code, body, err := metricsGet(metrics, "/metrics"); err != nil || code != http.StatusOK || !strings.Contains(string(body), "docker_proxy_serving 1") {
			t.Fatalf("restart %d: /metrics on the handed-over listener: %d, %v", i+1, code, err)
		}
		p = n
	}
	l.stop()
	t.Logf("%d requests, %d streams of %d requests, %d failed, across 5 restarts", l.ok.Load(), l.streams.Load(), streamRequests, l.failed.Load())
	if l.failed.Load() > 0 {
		t.Errorf("%d requests or streams failed; first errors: %v", l.failed.Load(), l.errs)
	}
	if !strings.Contains(p.logs.String(), "took over from the running proxy") {
		t.Error("the last process did not take over")
	}
	// The last one to stop removes the control socket it was handed.
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		t.Fatal("the last process did not stop on SIGTERM")
	}
	if _, err := os.Lstat(p.control); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the control socket %s is still there after the last proxy stopped: %v", p.control, err)
	}
}

// draining returns the status entry of a container in its grace period.
func draining(s *status, id string) *ctrStatus { return in(s, id, "draining") }

func pending(s *status, id string) *ctrStatus { return in(s, id, "pending") }

// in returns id's entry in s if it is in the list named list.
func in(s *status, id, list string) *ctrStatus {
	if c, where := s.entry(id); where == list {
		return c
	}
	return nil
}

// TestDockerRestartMidDeploy: a restart inside the old container's grace
// period: the new process keeps its deadline (a cold start would remove it
// at once), removes it then, and the serving container never changes.
func TestDockerRestartMidDeploy(t *testing.T) {
	tag := newTag(t, "v1")
	old := startCtr(t, tag)
	p := startCtlProxy(t, tag, "-grace_period", "8s")
	waitServed(t, p.addr, old, 10*time.Second)
	nu := startCtr(t, tag)
	var before *ctrStatus
	eventually(t, 10*time.Second, "the old container draining", func() bool {
		before = draining(p.status(t), old.id)
		return before != nil
	})

	n := p.successor(t)
	s := n.status(t)
	after := draining(s, old.id)
	switch {
	case s.Serving == nil || s.Serving.ID != nu.id:
		t.Fatalf("after the restart the new process serves %+v; want %s", s.Serving, nu.short())
	case after == nil:
		t.Fatalf("after the restart %s is not draining: %+v", old.short(), s)
	case !after.Deadline.Equal(*before.Deadline):
		t.Errorf("the grace period ends at %v under the new process; want %v, as before", after.Deadline, before.Deadline)
	}
	if !ctrExists(t, old.id) {
		t.Fatalf("%s was removed at the restart; want it kept until %v", old.short(), before.Deadline)
	}
	eventually(t, 30*time.Second, "the old container removed at the end of its grace period", func() bool { return !ctrExists(t, old.id) })
	line := n.logs.waitLog(t, time.Second, "removed", "container", old.short())
	if at, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(line["time"])); at.Before(*before.Deadline) {
		t.Errorf("removed at %v, before the end of its grace period %v", at, before.Deadline)
	}
	if got := whoAnswers(t, n.addr); got != nu.host {
		t.Errorf("%s answers; want %s", got, nu.host)
	}
}

// TestDockerRestartMidCheck: a restart while a new container's readiness
// is checked: the new process keeps its deadline, finishes the check and
// swaps.
func TestDockerRestartMidCheck(t *testing.T) {
	tag := newTag(t, "v1")
	old := startCtr(t, tag)
	p := startCtlProxy(t, tag, "-grace_period", "1s", "-status_timeout", "30s")
	waitServed(t, p.addr, old, 10*time.Second)
	nu := startCtr(t, tag, "-ready_after", "4s")
	var before *ctrStatus
	eventually(t, 10*time.Second, "the new container checked", func() bool {
		before = pending(p.status(t), nu.id)
		return before != nil
	})
	n := p.successor(t)
	if after := pending(n.status(t), nu.id); after != nil && !after.Deadline.Equal(*before.Deadline) {
		t.Errorf("the check's deadline is %v under the new process; want %v", after.Deadline, before.Deadline)
	}
	waitServed(t, n.addr, nu, 20*time.Second)
	eventually(t, 20*time.Second, "the old container removed", func() bool { return !ctrExists(t, old.id) })
}

// TestRestartFallsBack: a new process whose predecessor cannot hand over
// starts as today, saying why in one line: one that does not answer, and
// an older version that does not speak the protocol.
func TestRestartFallsBack(t *testing.T) {
	for _, tc := range []struct {
		name  string
		serve func(ln net.Listener)
		want  string
	}{
		{"silent", func(ln net.Listener) {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close() // held open, never answered
			}
		}, "the predecessor does not answer"},
		{"older", func(ln net.Listener) {
			_ = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set(controlHeader, "1")
				http.NotFound(w, r)
			}))
		}, "the predecessor does not speak docker-proxy-handover/1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "ctl.sock")
			ln, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go tc.serve(ln)
			port := freePort(t)
			cfg := config{address: "127.0.0.1", ports: []portMap{{uint16(port), 80}}}
			tk, err := takeOver(sock, cfg)
			if tk != nil || err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("takeOver: %v, %v; want no takeover and %q", tk, err, tc.want)
			}
		})
	}
	// No predecessor at all: a cold start, said nowhere.
	if _, err := takeOver(filepath.Join(t.TempDir(), "none.sock"), config{}); !errors.Is(err, errNoPredecessor) {
		t.Errorf("takeOver with no socket: %v; want errNoPredecessor", err)
	}
}

// TestDockerReloadInPlace: SIGUSR2, which systemctl reload sends (see
// examples/systemd): the process starts a new one of its binary, which
// takes over and tells systemd it is the main process now; the old one
// exits 0; no connection fails meanwhile. systemd is played by a
// NOTIFY_SOCKET of the test's.
func TestDockerReloadInPlace(t *testing.T) {
	tag := newTag(t, "v1")
	c := startCtr(t, tag)
	dir := t.TempDir()
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "notify"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	notes := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := notify.Read(buf)
			if err != nil {
				return
			}
			notes <- string(buf[:n])
		}
	}()
	mainPID := func() int {
		t.Helper()
		select {
		case s := <-notes:
			pid := 0
			for _, l := range strings.Split(s, "\n") {
				if v, ok := strings.CutPrefix(l, "MAINPID="); ok {
					pid, _ = strconv.Atoi(v)
				}
			}
			if !strings.Contains(s, "READY=1") || pid == 0 {
				t.Fatalf("notified %q; want READY=1 and MAINPID", s)
			}
			return pid
		case <-time.After(30 * time.Second):
			t.Fatal("no notification")
		}
		return 0
	}

	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	logFile, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	// Stderr is a file, not a pipe, so the old process's exit is not held
	// up by the new one, which inherits it.
	cmd := exec.Command(proxyBinary(t), "-log_format", "json", "-address", "127.0.0.1", "-ports", strconv.Itoa(port)+"=80",
		"-tag", tag, "-status_url", ":80/status", "-control", filepath.Join(dir, "ctl.sock"))
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify.LocalAddr().String())
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var pids []int
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		for _, pid := range pids {
			if p, err := os.FindProcess(pid); err == nil {
				_ = p.Kill()
			}
		}
		if t.Failed() {
			data, _ := os.ReadFile(logFile.Name())
			t.Logf("proxy log:\n%s", data)
		}
	})
	if pid := mainPID(); pid != cmd.Process.Pid {
		t.Fatalf("MAINPID %d; want the process's own %d", pid, cmd.Process.Pid)
	}
	waitServed(t, addr, c, 10*time.Second)

	l := startRestartLoad(t, addr, 16, 2)
	eventually(t, 10*time.Second, "load flowing", func() bool { return l.ok.Load() > 50 })
	if err := cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	next := mainPID()
	pids = append(pids, next)
	if next == cmd.Process.Pid {
		t.Fatalf("after SIGUSR2 MAINPID is still %d; want the new process's", next)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("the old process exited: %v; want status 0", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the old process did not exit after the hand-over")
	}
	before := l.ok.Load()
	eventually(t, 10*time.Second, "requests through the new process", func() bool { return l.ok.Load() > before+50 })
	l.stop()
	if l.failed.Load() > 0 {
		t.Errorf("%d requests or streams failed across the restart; first errors: %v", l.failed.Load(), l.errs)
	}
	t.Logf("%d requests, %d streams, 0 failed; main process %d -> %d", l.ok.Load(), l.streams.Load(), cmd.Process.Pid, next)
}
