package main

// Tests of the copy loop, the backend swap and the accept loop on real
// sockets on 127.0.0.1: a "container" is a local listener, and the proxy
// runs in process. No Docker. Every wait has a deadline; nothing sleeps to
// synchronise.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// loopServer is a local stand-in for a container: a listener on
// 127.0.0.1:0 that runs handle on each connection and closes it afterwards.
type loopServer struct {
	ln   *net.TCPListener
	port uint16

	mu       sync.Mutex
	conns    map[*net.TCPConn]struct{}
	accepted int
	closed   bool
	wg       sync.WaitGroup
}

func listenLoopback(tb testing.TB) *net.TCPListener {
	tb.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	return ln
}

func startLoopServer(tb testing.TB, handle func(c *net.TCPConn)) *loopServer {
	tb.Helper()
	ln := listenLoopback(tb)
	s := &loopServer{
		ln:    ln,
		port:  uint16(ln.Addr().(*net.TCPAddr).Port),
		conns: make(map[*net.TCPConn]struct{}),
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			s.mu.Lock()
			if s.closed {
				s.mu.Unlock()
				_ = c.Close()
				return
			}
			s.conns[c] = struct{}{}
			s.accepted++
			s.wg.Add(1)
			s.mu.Unlock()
			go func() {
				defer s.wg.Done()
				handle(c)
				_ = c.Close()
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
			}()
		}
	}()
	tb.Cleanup(s.close)
	return s
}

func (s *loopServer) close() {
	_ = s.ln.Close()
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	waitGroupFor(&s.wg, 5*time.Second)
}

// backend returns a backend whose only listener (index 0) dials s.
func (s *loopServer) backend(id string) *backend {
	return newBackend(id, netip.MustParseAddr("127.0.0.1"), []portMap{{host: 1, container: s.port}})
}

// echoConn sends back everything it reads; at EOF it half-closes.
func echoConn(c *net.TCPConn) {
	// Plain Reader/Writer: keep the test server simple and independent of
	// the splice path under test.
	_, _ = io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c})
	_ = c.CloseWrite()
}

// taggedEcho answers each line with "<id> <line>".
func taggedEcho(id string) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			if _, err := fmt.Fprintf(c, "%s %s\n", id, sc.Text()); err != nil {
				return
			}
		}
	}
}

// sinkConn discards everything it reads and reports how much at EOF.
func sinkConn(total chan<- int64) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		n, _ := io.Copy(io.Discard, struct{ io.Reader }{c})
		total <- n
	}
}

// proxyRig is a proxy serving one listener (index 0) on 127.0.0.1.
type proxyRig struct {
	route *router
	p     *proxy
	ln    *net.TCPListener
	addr  string
	stop  func() // ends serve and waits for it and for every pair (once)
}

// startProxyRig runs a proxy with b as the current backend (none if nil).
// Cleanup cancels it, waits for serve to return and for every pair to close.
func startProxyRig(tb testing.TB, b *backend, hold time.Duration, maxConns int, opts ...func(*proxy)) *proxyRig {
	tb.Helper()
	route := newRouter()
	if b != nil {
		route.store(b)
	}
	ln := listenLoopback(tb)
	p := newProxy(route, []portMap{{host: 1, container: 1}}, hold, maxConns, slog.New(slog.DiscardHandler))
	for _, opt := range opts {
		opt(p)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- p.serve(ctx, ln, 0) }()
	stop := sync.OnceFunc(func() {
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				tb.Errorf("serve returned %v; want nil", err)
			}
		case <-time.After(5 * time.Second):
			tb.Errorf("serve still running 5s after its context ended")
		}
		if !waitGroupFor(&p.open, 5*time.Second) {
			tb.Errorf("connections still open 5s after serve ended")
		}
	})
	tb.Cleanup(stop)
	return &proxyRig{route: route, p: p, ln: ln, addr: ln.Addr().String(), stop: stop}
}

// waitGroupFor waits for wg up to d and reports whether it finished.
func waitGroupFor(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// dialTCP connects to addr with a 10s deadline on the whole connection; the
// connection is closed when the test ends.
func dialTCP(tb testing.TB, addr string) *net.TCPConn {
	tb.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		tb.Fatalf("dial %s: %v", addr, err)
	}
	tc := c.(*net.TCPConn)
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	tb.Cleanup(func() { _ = tc.Close() })
	return tc
}

// echoRound writes msg and reads len(msg) bytes back.
func echoRound(tb testing.TB, c *net.TCPConn, msg string) {
	tb.Helper()
	echoRoundWant(tb, c, msg, msg)
}

// echoRoundWant writes msg and reads back want.
func echoRoundWant(tb testing.TB, c *net.TCPConn, msg, want string) {
	tb.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		tb.Fatalf("write: %v", err)
	}
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		tb.Fatalf("read the answer to %q: %v", msg, err)
	}
	if string(got) != want {
		tb.Fatalf("answer to %q: got %q; want %q", msg, got, want)
	}
}

// lineRound writes line and reads one line of reply.
func lineRound(c *net.TCPConn, r *bufio.Reader, line string) (string, error) {
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	got, err := r.ReadString('\n')
	return strings.TrimSuffix(got, "\n"), err
}

func isTimeoutErr(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// expectClosed asserts that c is closed by its peer within d: a read
// returns EOF or an error other than a timeout, with no data.
func expectClosed(tb testing.TB, c *net.TCPConn, d time.Duration) {
	tb.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	var buf [64]byte
	n, err := c.Read(buf[:])
	switch {
	case n > 0:
		tb.Fatalf("read %q; want the connection closed", buf[:n])
	case err == nil:
		tb.Fatalf("read returned no data and no error; want the connection closed")
	case isTimeoutErr(err):
		tb.Fatalf("connection still open after %v", d)
	}
}

// expectSilent asserts that nothing arrives on c, and c is not closed,
// for d; afterwards c can be read again.
func expectSilent(tb testing.TB, c *net.TCPConn, d time.Duration) {
	tb.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	var buf [64]byte
	n, err := c.Read(buf[:])
	if n > 0 || !isTimeoutErr(err) {
		tb.Fatalf("within %v: read %q, %v; want nothing", d, buf[:n], err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
}

// waitUntil polls cond every 5ms until it holds, failing after d.
func waitUntil(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("after %v: still not %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestProxyForwardsBothWays(t *testing.T) {
	srv := startLoopServer(t, echoConn)
	rig := startProxyRig(t, srv.backend("id-a"), 0, 0)
	c := dialTCP(t, rig.addr)

	data := make([]byte, 1<<20)
	_, _ = rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("got %d bytes back, not identical to the %d sent", len(got), len(data))
	}
}

func TestProxyClientHalfCloseGetsWholeReply(t *testing.T) {
	seen := make(chan []byte, 1)
	reply := bytes.Repeat([]byte("reply after the client's EOF\n"), 10000)
	srv := startLoopServer(t, func(c *net.TCPConn) {
		got, err := io.ReadAll(c) // returns at the client's EOF
		if err != nil {
			got = nil
		}
		seen <- got
		_, _ = c.Write(reply)
	})
	rig := startProxyRig(t, srv.backend("id-a"), 0, 0)
	c := dialTCP(t, rig.addr)

	msg := []byte("the whole request")
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	if !bytes.Equal(got, reply) {
		t.Fatalf("got %d bytes of reply; want %d", len(got), len(reply))
	}
	select {
	case b := <-seen:
		if string(b) != string(msg) {
			t.Fatalf("backend read %q before EOF; want %q", b, msg)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("backend never saw EOF")
	}
}

func TestProxyBackendHalfCloseClientStillSends(t *testing.T) {
	seen := make(chan string, 1)
	srv := startLoopServer(t, func(c *net.TCPConn) {
		_, _ = io.WriteString(c, "hello")
		_ = c.CloseWrite()
		got, _ := io.ReadAll(c)
		seen <- string(got)
	})
	rig := startProxyRig(t, srv.backend("id-a"), 0, 0)
	c := dialTCP(t, rig.addr)

	got, err := io.ReadAll(c) // ends at the backend's EOF
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(got) != "hello" {
		t.Fatalf("got %q; want %q", got, "hello")
	}
	if _, err := io.WriteString(c, "still here"); err != nil {
		t.Fatalf("write after EOF: %v", err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	select {
	case s := <-seen:
		if s != "still here" {
			t.Fatalf("backend got %q; want %q", s, "still here")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("backend never received the client's data")
	}
}

func TestProxyManyConcurrentConnections(t *testing.T) {
	const n = 200
	srv := startLoopServer(t, echoConn)
	rig := startProxyRig(t, srv.backend("id-a"), 0, 0)

	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			c, err := net.DialTimeout("tcp", rig.addr, 5*time.Second)
			if err != nil {
				t.Errorf("conn %d: dial: %v", i, err)
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			msg := fmt.Sprintf("message of connection %d", i)
			if _, err := io.WriteString(c, msg); err != nil {
				t.Errorf("conn %d: write: %v", i, err)
				return
			}
			_ = c.(*net.TCPConn).CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil || string(got) != msg {
				t.Errorf("conn %d: got %q, %v; want %q", i, got, err, msg)
			}
		})
	}
	wg.Wait()
}

func TestProxySwapMidStream(t *testing.T) {
	srvA := startLoopServer(t, taggedEcho("A"))
	srvB := startLoopServer(t, taggedEcho("B"))
	a, b := srvA.backend("id-a"), srvB.backend("id-b")
	rig := startProxyRig(t, a, 0, 0)

	old := dialTCP(t, rig.addr)
	oldR := bufio.NewReader(old)
	if got, err := lineRound(old, oldR, "first"); err != nil || got != "A first" {
		t.Fatalf("before swap: got %q, %v; want %q", got, err, "A first")
	}

	// Keep the old pair flowing while the swap happens.
	var rounds atomic.Int64
	stop := make(chan struct{})
	flowErr := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				flowErr <- nil
				return
			default:
			}
			want := fmt.Sprintf("A round-%d", i)
			got, err := lineRound(old, oldR, fmt.Sprintf("round-%d", i))
			if err != nil || got != want {
				flowErr <- fmt.Errorf("old pair, round %d: got %q, %v; want %q", i, got, err, want)
				return
			}
			rounds.Add(1)
		}
	}()

	waitUntil(t, 5*time.Second, "flowing before the swap", func() bool { return rounds.Load() >= 10 })
	rig.route.store(b)
	atSwap := rounds.Load()

	for i := range 5 {
		c := dialTCP(t, rig.addr)
		want := fmt.Sprintf("B new-%d", i)
		if got, err := lineRound(c, bufio.NewReader(c), fmt.Sprintf("new-%d", i)); err != nil || got != want {
			t.Fatalf("after swap: got %q, %v; want %q", got, err, want)
		}
	}
	waitUntil(t, 5*time.Second, "flowing after the swap", func() bool { return rounds.Load() >= atSwap+20 })
	close(stop)
	select {
	case err := <-flowErr:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("old pair stopped answering")
	}
	if got, err := lineRound(old, oldR, "last"); err != nil || got != "A last" {
		t.Fatalf("old pair after swap: got %q, %v; want %q", got, err, "A last")
	}
	if n := a.count(); n != 1 {
		t.Errorf("A carries %d connections; want 1", n)
	}
}

// track puts p in b's registry (or one of its own) and on b, as the proxy
// does for a connection it forwards to b: for tests with no proxy.
func (b *backend) track(p *pair) bool {
	b.mu.Lock()
	reg := b.reg
	b.mu.Unlock()
	if reg == nil {
		reg = newConns()
	}
	reg.add(p)
	if !reg.assign(p, b, nil) {
		reg.remove(p)
		return false
	}
	return true
}

// untrack takes p, put on b by track, off again.
func (b *backend) untrack(p *pair) {
	if p.reg != nil {
		p.reg.remove(p)
	}
}

func TestBackendCloseAll(t *testing.T) {
	srvA := startLoopServer(t, echoConn)
	srvB := startLoopServer(t, echoConn)
	a, b := srvA.backend("id-a"), srvB.backend("id-b")
	rig := startProxyRig(t, a, 0, 0)

	c1, c2 := dialTCP(t, rig.addr), dialTCP(t, rig.addr)
	echoRound(t, c1, "one")
	echoRound(t, c2, "two")
	if n := a.count(); n != 2 {
		t.Fatalf("A carries %d connections; want 2", n)
	}

	rig.route.store(b)
	if n := a.closeAll(); n != 2 {
		t.Errorf("closeAll closed %d; want 2", n)
	}
	expectClosed(t, c1, 2*time.Second)
	expectClosed(t, c2, 2*time.Second)
	waitUntil(t, 5*time.Second, "A empty", func() bool { return a.count() == 0 })
	if a.track(&pair{}) {
		t.Error("track succeeded on a closed backend")
	}
	select {
	case <-a.drained():
	default:
		t.Error("drained() of an empty backend is not closed")
	}

	c3 := dialTCP(t, rig.addr)
	echoRound(t, c3, "three")
	if n := b.count(); n != 1 {
		t.Errorf("B carries %d connections; want 1", n)
	}
}

// TestBackendCloseAllRouteUnchanged: a connection that arrives while the
// route still points to a closed backend is refused, not left hanging.
func TestBackendCloseAllRouteUnchanged(t *testing.T) {
	srv := startLoopServer(t, echoConn)
	a := srv.backend("id-a")
	rig := startProxyRig(t, a, 0, 0)
	a.closeAll()
	c := dialTCP(t, rig.addr)
	expectClosed(t, c, 5*time.Second)
	if n := a.count(); n != 0 {
		t.Errorf("closed backend carries %d connections; want 0", n)
	}
}

func TestBackendDrained(t *testing.T) {
	srv := startLoopServer(t, echoConn)
	a := srv.backend("id-a")
	select {
	case <-a.drained():
	default:
		t.Fatal("drained() of a new backend is not closed")
	}
	rig := startProxyRig(t, a, 0, 0)

	c1, c2 := dialTCP(t, rig.addr), dialTCP(t, rig.addr)
	echoRound(t, c1, "one")
	echoRound(t, c2, "two")
	ch := a.drained()
	select {
	case <-ch:
		t.Fatal("drained() closed with 2 open connections")
	default:
	}

	_ = c1.Close()
	waitUntil(t, 5*time.Second, "down to 1 connection", func() bool { return a.count() == 1 })
	select {
	case <-ch:
		t.Fatal("drained() closed with 1 open connection")
	default:
	}
	if ch2 := a.drained(); ch2 != ch {
		t.Error("drained() returned a different channel while still busy")
	}

	_ = c2.Close()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("drained() not closed 5s after the last connection closed")
	}
	if n := a.count(); n != 0 {
		t.Errorf("count %d after drained; want 0", n)
	}

	// It works again for a later round of connections.
	c3 := dialTCP(t, rig.addr)
	echoRound(t, c3, "three")
	ch = a.drained()
	_ = c3.Close()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("second drained() not closed")
	}
}

func TestProxyNoBackendClosesPromptly(t *testing.T) {
	rig := startProxyRig(t, nil, 0, 0)
	c := dialTCP(t, rig.addr)
	_, _ = io.WriteString(c, "anyone?")
	expectClosed(t, c, 5*time.Second)
}

func TestProxyHoldUntilBackendAppears(t *testing.T) {
	srv := startLoopServer(t, echoConn)
	rig := startProxyRig(t, nil, 2*time.Second, 0)
	c := dialTCP(t, rig.addr)
	if _, err := io.WriteString(c, "held"); err != nil {
		t.Fatalf("write: %v", err)
	}
	// Held, not closed: with hold 0 this would see EOF.
	expectSilent(t, c, 200*time.Millisecond)
	rig.route.store(srv.backend("id-a"))
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "held" {
		t.Fatalf("got %q, %v; want %q", got, err, "held")
	}
}

func TestProxyHoldExpires(t *testing.T) {
	const hold = 300 * time.Millisecond
	rig := startProxyRig(t, nil, hold, 0)
	start := time.Now()
	c := dialTCP(t, rig.addr)
	expectClosed(t, c, 5*time.Second)
	if d := time.Since(start); d < hold {
		t.Errorf("closed after %v; want at least the hold, %v", d, hold)
	}
}

func TestProxyDialFailureRetried(t *testing.T) {
	dead := listenLoopback(t)
	deadPort := uint16(dead.Addr().(*net.TCPAddr).Port)
	_ = dead.Close()
	gone := newBackend("id-gone", netip.MustParseAddr("127.0.0.1"), []portMap{{host: 1, container: deadPort}})
	srv := startLoopServer(t, echoConn)

	rig := startProxyRig(t, gone, 3*time.Second, 0)
	c := dialTCP(t, rig.addr)
	if _, err := io.WriteString(c, "retry"); err != nil {
		t.Fatalf("write: %v", err)
	}
	expectSilent(t, c, 200*time.Millisecond)
	rig.route.store(srv.backend("id-a"))
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "retry" {
		t.Fatalf("got %q, %v; want %q", got, err, "retry")
	}
	if n := gone.count(); n != 0 {
		t.Errorf("failed backend carries %d connections; want 0", n)
	}
}

func TestProxyMaxConns(t *testing.T) {
	srv := startLoopServer(t, echoConn)
	rig := startProxyRig(t, srv.backend("id-a"), 0, 2)

	c1, c2 := dialTCP(t, rig.addr), dialTCP(t, rig.addr)
	echoRound(t, c1, "one")
	echoRound(t, c2, "two")
	if n := counterValue(t, rig.p.m.limited[0]); n != 0 {
		t.Errorf("connections_limited_total %v below the limit; want 0", n)
	}

	c3 := dialTCP(t, rig.addr) // completes in the kernel's backlog
	if _, err := io.WriteString(c3, "three"); err != nil {
		t.Fatalf("write: %v", err)
	}
	expectSilent(t, c3, 300*time.Millisecond)
	waitUntil(t, 5*time.Second, "connections_limited_total at 1", func() bool {
		return counterValue(t, rig.p.m.limited[0]) == 1
	})

	_ = c1.Close()
	got := make([]byte, 5)
	if _, err := io.ReadFull(c3, got); err != nil || string(got) != "three" {
		t.Fatalf("third connection: got %q, %v; want %q", got, err, "three")
	}
	echoRound(t, c2, "two again")
}

// TestProxyServeEndsWithContext covers both places serve can be blocked
// when its context ends: in Accept, and waiting for a -max_conns slot.
func TestProxyServeEndsWithContext(t *testing.T) {
	for _, tc := range []struct {
		name     string
		maxConns int
	}{
		{"accepting", 0},
		{"at max_conns", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startLoopServer(t, echoConn)
			route := newRouter()
			route.store(srv.backend("id-a"))
			p := newProxy(route, []portMap{{host: 1, container: 1}}, 0, tc.maxConns, slog.New(slog.DiscardHandler))
			ln := listenLoopback(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			errc := make(chan error, 1)
			go func() { errc <- p.serve(ctx, ln, 0) }()

			c := dialTCP(t, ln.Addr().String())
			echoRound(t, c, "up") // serve is running; with max 1 it is now at the limit
			cancel()
			select {
			case err := <-errc:
				if err != nil {
					t.Fatalf("serve returned %v; want nil", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("serve still running 5s after its context ended")
			}
			// The listener is closed (by an AfterFunc, so poll).
			waitUntil(t, 5*time.Second, "listener closed", func() bool {
				_ = ln.SetDeadline(time.Now().Add(10 * time.Millisecond))
				c, err := ln.AcceptTCP()
				if c != nil {
					_ = c.Close()
				}
				return errors.Is(err, net.ErrClosed)
			})
			// The open pair is not cut by the end of serve.
			echoRound(t, c, "still up")
			_ = c.Close()
			if !waitGroupFor(&p.open, 5*time.Second) {
				t.Fatal("pair not closed after the client closed")
			}
		})
	}
}

// TestPairFieldsAreTCPConn keeps the splice path honest: io.Copy between two
// *net.TCPConn uses splice(2); a wrapper type would silently turn it off.
func TestPairFieldsAreTCPConn(t *testing.T) {
	want := reflect.TypeFor[*net.TCPConn]()
	pt := reflect.TypeFor[pair]()
	for _, name := range []string{"client", "server"} {
		f, ok := pt.FieldByName(name)
		if !ok {
			t.Fatalf("pair has no field %s", name)
		}
		if f.Type != want {
			t.Errorf("pair.%s is %v; want %v", name, f.Type, want)
		}
	}
	if got := reflect.TypeOf((*proxy).serve).In(2); got != reflect.TypeFor[*net.TCPListener]() {
		t.Errorf("serve takes %v; want *net.TCPListener (AcceptTCP)", got)
	}
}

// BenchmarkConnect opens one connection per iteration through the proxy to
// a backend that writes one byte and closes: the accept-dial-copy path.
func BenchmarkConnect(b *testing.B) {
	srv := startLoopServer(b, oneByte)
	rig := startProxyRig(b, srv.backend("id-a"), 0, 0)
	benchConnect(b, rig.addr)
}

// BenchmarkDirectConnect is BenchmarkConnect without the proxy.
func BenchmarkDirectConnect(b *testing.B) {
	srv := startLoopServer(b, oneByte)
	benchConnect(b, srv.ln.Addr().String())
}

func oneByte(c *net.TCPConn) { _, _ = c.Write([]byte{'x'}) }

func benchConnect(b *testing.B, addr string) {
	d := net.Dialer{Timeout: 5 * time.Second}
	var buf [1]byte
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			b.Fatalf("dial: %v", err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, buf[:]); err != nil {
			b.Fatalf("read: %v", err)
		}
		_ = c.Close()
	}
}

// BenchmarkRequestResponse sends 64 bytes and reads them back per
// iteration, on one connection.
func BenchmarkRequestResponse(b *testing.B) {
	srv := startLoopServer(b, echoConn)
	rig := startProxyRig(b, srv.backend("id-a"), 0, 0)
	c := dialTCP(b, rig.addr)
	_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
	msg := bytes.Repeat([]byte("x"), 64)
	got := make([]byte, 64)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(msg); err != nil {
			b.Fatalf("write: %v", err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			b.Fatalf("read: %v", err)
		}
	}
}

// BenchmarkThroughput pushes 1 MiB per iteration through the proxy to a
// backend that discards it, on one connection, and counts only what the
// backend received.
func BenchmarkThroughput(b *testing.B) {
	const chunk = 1 << 20
	total := make(chan int64, 1)
	srv := startLoopServer(b, sinkConn(total))
	rig := startProxyRig(b, srv.backend("id-a"), 0, 0)
	c := dialTCP(b, rig.addr)
	_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
	data := make([]byte, chunk)
	_, _ = rand.Read(data)
	b.SetBytes(chunk)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(data); err != nil {
			b.Fatalf("write: %v", err)
		}
	}
	if err := c.CloseWrite(); err != nil {
		b.Fatalf("CloseWrite: %v", err)
	}
	select {
	case n := <-total:
		if n != int64(b.N)*chunk {
			b.Fatalf("backend received %d bytes; want %d", n, int64(b.N)*chunk)
		}
	case <-time.After(time.Minute):
		b.Fatal("backend did not see EOF")
	}
}
