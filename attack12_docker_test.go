package main

// Attacks on the hand-over (handover.go) against proxy binaries and the
// real daemon: successors played by the test (takeOver and accepting, the
// successor's own steps) that die, or that the old process's SIGTERM
// overtakes; the control socket's path after each; -drain across a
// restart.

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ctlCfg is the configuration a successor of p has, for takeOver.
func ctlCfg(t testing.TB, p ctlProxy) config {
	t.Helper()
	_, port, err := net.SplitHostPort(p.addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(port)
	return config{address: "127.0.0.1", ports: []portMap{{uint16(n), 80}}}
}

// procFDs lists the descriptors of process pid, as readlink shows them.
func procFDs(t testing.TB, pid int) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		return nil // gone
	}
	var out []string
	for _, e := range ents {
		if l, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/fd/" + e.Name()); err == nil {
			out = append(out, l)
		}
	}
	return out
}

// socketInode is the inode of a socket's descriptor, as /proc shows it.
func socketInode(t testing.TB, ln interface {
	File() (*os.File, error)
}) string {
	t.Helper()
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return "socket:[" + strconv.FormatUint(st.Ino, 10) + "]"
}

func waitExit(t testing.TB, p *procProxy, within time.Duration, what string) {
	t.Helper()
	select {
	case <-p.exited:
		if p.err != nil {
			t.Fatalf("%s: exit %v; want status 0", what, p.err)
		}
	case <-time.After(within):
		t.Fatalf("%s: did not exit", what)
	}
}

// TestDockerAttackSuccessorDiesBeforeAck: a successor that got the
// listeners dies (or hangs) before it says it accepts: the old process
// serves on without a gap, closes the copies it made, and a later
// successor takes over.
func TestDockerAttackSuccessorDiesBeforeAck(t *testing.T) {
	tag := newTag(t, "v1")
	c := startCtr(t, tag)
	p := startCtlProxy(t, tag)
	waitServed(t, p.addr, c, 10*time.Second)
	pid := p.cmd.Process.Pid
	before := len(procFDs(t, pid))
	l := startRestartLoad(t, p.addr, 4, 0)

	// Dies: the connection and its copies of the listeners close.
	tk, err := takeOver(p.control, ctlCfg(t, p))
	if err != nil {
		t.Fatalf("takeOver: %v", err)
	}
	_ = tk.conn.Close()
	tk.socks.close()
	p.logs.waitLog(t, 10*time.Second, "hand-over failed: serving on")

	// Hangs: the old process gives up after handoverTimeout.
	tk, err = takeOver(p.control, ctlCfg(t, p))
	if err != nil {
		t.Fatalf("takeOver after a failed one: %v", err)
	}
	if got := whoAnswers(t, p.addr); got != c.host {
		t.Fatalf("while a successor hangs %s answers; want %s", got, c.host)
	}
	eventually(t, 2*handoverTimeout, "the second failure logged", func() bool {
		return len(p.logs.lines("hand-over failed: serving on")) == 2
	})
	_ = tk.conn.Close()
	tk.socks.close()
	l.stop() // its connections come and go: count without them
	if l.failed.Load() > 0 {
		t.Errorf("%d requests failed across the failed hand-overs: %v", l.failed.Load(), l.errs)
	}
	eventually(t, 10*time.Second, "the old process's descriptors back to what they were", func() bool {
		return len(procFDs(t, pid)) <= before
	})
	if _, err := newCtlClient(p.control).status(t.Context()); err != nil {
		t.Fatalf("the control socket after the failed hand-overs: %v", err)
	}
	n := p.successor(t)
	waitExit(t, p.procProxy, 20*time.Second, "the old process after a real hand-over")
	if got := whoAnswers(t, n.addr); got != c.host {
		t.Errorf("%s answers; want %s", got, c.host)
	}
}

// TestDockerAttackSIGTERMMidHandover: the old process is told to stop
// (SIGTERM) after it sent its listeners, before the successor says it
// accepts. The successor serves on those listeners and on the control
// socket it got: the socket's path must stay, or the successor can never
// be reached (status, wait, deploy) nor handed over from again.
func TestDockerAttackSIGTERMMidHandover(t *testing.T) {
	tag := newTag(t, "v1")
	c := startCtr(t, tag)
	p := startCtlProxy(t, tag)
	waitServed(t, p.addr, c, 10*time.Second)
	tk, err := takeOver(p.control, ctlCfg(t, p))
	if err != nil {
		t.Fatalf("takeOver: %v", err)
	}
	defer tk.socks.close()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Until the old process has stopped accepting: it then waits for the
	// hand-over under way, to confirm the ack, before it exits.
	p.logs.waitLog(t, 10*time.Second, "stopped")
	select {
	case <-p.exited:
		t.Fatal("the old process exited with the successor's ack unconfirmed")
	case <-time.After(200 * time.Millisecond):
	}
	// Unconfirmed, a successor stops: with the old one stopping too,
	// nobody would accept.
	if err := tk.accepting(); err != nil {
		t.Errorf("the old process, told to stop mid-hand-over, did not confirm the ack: %v", err)
	}
	waitExit(t, p.procProxy, 20*time.Second, "the old process")
	if _, err := os.Lstat(p.control); err != nil {
		t.Fatalf("the control socket's path after the old process stopped mid-hand-over: %v; the successor holds the socket and cannot be reached", err)
	}
	// The successor (the test) answers on it.
	go func() {
		c, err := tk.socks.control.Accept()
		if err == nil {
			_ = c.Close()
		}
	}()
	conn, err := net.DialTimeout("unix", p.control, time.Second)
	if err != nil {
		t.Fatalf("dial the control socket: %v", err)
	}
	_ = conn.Close()
}

// fakeHandover plays, in the test, a predecessor that hands over a data
// port and its control socket to a real successor binary: the listeners
// are the test's. before runs once the successor has read the answer,
// after once it acked (or closed).
type fakeHandover struct {
	port    int
	control string
	data    *net.TCPListener
	acks    <-chan string
}

func startFakeHandover(t *testing.T, before func(), after func(ack string)) *fakeHandover {
	t.Helper()
	return startFakeHandoverAnswering(t, before, after, handoverStop)
}

func startFakeHandoverAnswering(t *testing.T, before func(), after func(ack string), answer string) *fakeHandover {
	t.Helper()
	f := &fakeHandover{control: filepath.Join(t.TempDir(), "ctl.sock")}
	cln, err := net.ListenUnix("unix", &net.UnixAddr{Name: f.control, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cln.Close() })
	data, fd := tcpListenerFD(t)
	f.data, f.port = data, data.Addr().(*net.TCPAddr).Port
	cf, err := cln.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cf.Close() })
	f.acks = fakePredecessorAnswering(cln, func() ([]int, []byte) {
		if before != nil {
			before()
		}
		return []int{fd, int(cf.Fd())}, stateMsg(t, handoverState{Version: 1, PID: os.Getpid(),
			Listeners: []handoverSocket{{Kind: "port", Port: uint16(f.port)}, {Kind: "control"}}})
	}, after, answer)
	return f
}

func (f *fakeHandover) args(tag string) []string {
	return []string{"-address", "127.0.0.1", "-ports", strconv.Itoa(f.port) + "=80", "-tag", tag,
		"-status_url", ":80/status", "-control", f.control}
}

// TestDockerAttackSuccessorStoppedBeforeAck: a successor told to stop
// (SIGTERM) while it takes over must not tell the old process that it
// accepts: the old one would stop accepting, and this one stops too, so
// nobody accepts.
func TestDockerAttackSuccessorStoppedBeforeAck(t *testing.T) {
	tag := newTag(t, "v1")
	var n *procProxy
	ready := make(chan struct{})
	f := startFakeHandover(t, func() {
		<-ready
		_ = n.cmd.Process.Signal(syscall.SIGTERM)
		n.logs.waitLog(t, 10*time.Second, "stopping")
	}, nil)
	n = startBinary(t, "", f.args(tag)...)
	close(ready)
	select {
	case ack := <-f.acks:
		if ack != "" {
			t.Errorf("a successor stopped before it took over acked %q; want nothing: the old process must serve on", ack)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the hand-over did not end")
	}
	waitExit(t, n, 20*time.Second, "the stopped successor")
	if _, err := os.Lstat(f.control); err != nil {
		t.Errorf("the predecessor's control socket after the successor stopped: %v", err)
	}
}

// TestDockerAttackNotifyBeforeAck: under systemd (Type=notify) the
// successor must say MAINPID=itself before it tells the old process to
// stop: the old one may exit at once (nothing open), and a main process
// that exits before systemd heard of the new one is the service's end
// (Restart=always kills the rest of the unit, the new proxy with it).
func TestDockerAttackNotifyBeforeAck(t *testing.T) {
	tag := newTag(t, "v1")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "notify"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	heard := make(chan string, 1)
	f := startFakeHandover(t, nil, func(ack string) {
		// What systemd has heard when the old process is told to stop
		// (what is queued now: a read that does not wait).
		buf := make([]byte, 4096)
		n := 0
		if rc, err := notify.SyscallConn(); err == nil {
			_ = rc.Read(func(fd uintptr) bool {
				n, _, _ = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
				n = max(n, 0)
				return true
			})
		}
		heard <- string(buf[:n])
	})
	pp := startBinaryEnv(t, []string{"NOTIFY_SOCKET=" + notify.LocalAddr().String()}, f.args(tag)...)
	select {
	case ack := <-f.acks:
		if ack != handoverAck {
			t.Fatalf("ack %q; want %q", ack, handoverAck)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the hand-over did not end")
	}
	if got := <-heard; !strings.Contains(got, "MAINPID="+strconv.Itoa(pp.cmd.Process.Pid)) {
		t.Errorf("when the successor acked, systemd had heard %q; want READY=1 and MAINPID=%d first", got, pp.cmd.Process.Pid)
	}
}

// TestDockerAttackSuccessorRemovesItsSocket: a successor that stops
// (SIGTERM) removes the control socket's path, as a proxy that made it
// does; it does not leave a dead socket behind.
func TestDockerAttackSuccessorRemovesItsSocket(t *testing.T) {
	tag := newTag(t, "v1")
	c := startCtr(t, tag)
	p := startCtlProxy(t, tag)
	waitServed(t, p.addr, c, 10*time.Second)
	n := p.successor(t)
	waitExit(t, p.procProxy, 20*time.Second, "the old process")
	if _, err := os.Lstat(p.control); err != nil {
		t.Fatalf("the control socket's path after the hand-over: %v", err)
	}
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitExit(t, n.procProxy, 20*time.Second, "the successor")
	if _, err := os.Lstat(p.control); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after the successor stopped the control socket's path is still there (%v); want it removed, as a cold-started proxy removes it", err)
	}
}

// TestDockerAttackDrainAcrossRestart: with -drain a container is removed
// once its last connection closes. After a hand-over the old process
// still carries connections to the serving container; a deploy right
// after must not remove that container while they are open.
func TestDockerAttackDrainAcrossRestart(t *testing.T) {
	tag := newTag(t, "v1")
	x := startCtr(t, tag)
	p := startCtlProxy(t, tag, "-drain", "-grace_period", "60s", "-shutdown_timeout", "60s")
	waitServed(t, p.addr, x, 10*time.Second)
	slow := make(chan error, 1)
	go func() {
		client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
		resp, err := client.Get("http://" + p.addr + "/slow?ms=12000")
		if err == nil {
			var body []byte
			body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && strings.TrimSpace(string(body)) != x.host {
				err = errors.New("answered by " + string(body))
			}
		}
		slow <- err
	}()
	eventually(t, 5*time.Second, "the slow request in flight", func() bool {
		return strings.Contains(connectionsTo(t, x), "ESTAB")
	})
	n := p.successor(t)
	p.logs.waitLog(t, 10*time.Second, "handed over to a new process: no new connections here; open ones may finish")
	y := startCtr(t, tag)
	waitServed(t, n.addr, y, 20*time.Second)
	select {
	case err := <-slow:
		if err != nil {
			t.Fatalf("the request the old process carried to %s: %v; the successor removed the container under it", x.short(), err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the slow request did not finish")
	}
	eventually(t, 30*time.Second, "the drained container removed", func() bool { return !ctrExists(t, x.id) })
	waitExit(t, p.procProxy, 30*time.Second, "the old process")
}

// TestDockerLateAckStops: a predecessor that refuses the ack (its step
// timed out: it serves on) must not be left accepting beside a successor
// that also runs the deploy rule: the successor stops, exit 1.
func TestDockerLateAckStops(t *testing.T) {
	tag := newTag(t, "v1")
	f := startFakeHandoverAnswering(t, nil, nil, handoverRefuse)
	pp := startBinary(t, "", f.args(tag)...)
	pp.logs.waitLog(t, 20*time.Second, "the hand-over did not complete: the running proxy serves on, and this one stops")
	select {
	case <-pp.exited:
		if code := processExit(pp.err); code != 1 {
			t.Errorf("the successor exited %v; want status 1", pp.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the successor did not stop")
	}
}

// TestDockerAckUnansweredServes: a predecessor that dies after sending its
// listeners (no answer to the ack) leaves the successor serving, not
// stopping too: somebody must accept.
func TestDockerAckUnansweredServes(t *testing.T) {
	tag := newTag(t, "v1")
	c := startCtr(t, tag)
	f := startFakeHandoverAnswering(t, nil, nil, "")
	pp := startBinary(t, "", f.args(tag)...)
	pp.logs.waitLog(t, 20*time.Second, "the predecessor did not answer the hand-over: serving")
	_ = f.data.Close() // the dead predecessor's copy of the port
	waitServed(t, "127.0.0.1:"+strconv.Itoa(f.port), c, 20*time.Second)
	select {
	case <-pp.exited:
		t.Fatalf("the successor exited: %v", pp.err)
	default:
	}
}
