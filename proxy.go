package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// proxy accepts connections on its listeners and forwards each one to the
// backend current at the moment it arrives.
type proxy struct {
	route         *router
	ports         []portMap
	hold          time.Duration // how long a new connection may wait for a backend
	replayMax     int           // -replay_bytes: client bytes kept until the server answers
	proxyProtocol int           // -proxy_protocol: 0 (off), 1 or 2
	dialer        net.Dialer
	log           *slog.Logger
	reg           *conns
	open          sync.WaitGroup // pairs not yet closed
	slots         chan struct{}  // -max_conns: one token per open connection

	// life bounds every dial and hold: it ends when the proxy gives up
	// on its connections (the end of -shutdown_timeout).
	life context.Context
	kill context.CancelFunc
	// draining: the proxy stops, and so does the deployer, so a held
	// connection with no container to wait for ends (see drain).
	draining atomic.Bool

	kept atomic.Int64 // bytes of kept buffers handed out (see keep.go)

	idle   chan accepted // to a handler waiting for a connection
	idlers atomic.Int32  // handlers waiting on idle

	lastDrop atomic.Int64 // unix second of the last "not forwarded" log line
	m        *metrics
}

// retryDial is how long to wait before dialing a backend again after a
// failure, when no other backend has appeared meanwhile.
const retryDial = 50 * time.Millisecond

func newProxy(route *router, ports []portMap, hold time.Duration, maxConns int, log *slog.Logger) *proxy {
	p := &proxy{
		route: route,
		ports: ports,
		hold:  hold,
		// No TCP keep-alive toward containers: they are local, and one
		// that dies is seen by its die event. (Clients keep Go's
		// default keep-alive, to find the ones that vanish.)
		dialer:    net.Dialer{Timeout: dialTimeout(hold), KeepAlive: -1},
		replayMax: defaultReplayBytes,
		reg:       newConns(),
		idle:      make(chan accepted),
		m:         newMetrics(ports),
		log:       log,
	}
	p.life, p.kill = context.WithCancel(context.Background())
	if maxConns > 0 {
		p.slots = make(chan struct{}, maxConns)
	}
	return p
}

// dialTimeout bounds one dial so that a held connection has time for
// several: a container that drops SYNs must not use the whole hold.
func dialTimeout(hold time.Duration) time.Duration {
	if hold <= 0 {
		return 5 * time.Second // one dial, no retry
	}
	return min(max(hold/4, 250*time.Millisecond), 5*time.Second, hold)
}

// drain tells held connections that no container will come any more: the
// ones waiting for one end, the ones retrying a dial go on until the hold
// or the shutdown ends.
func (p *proxy) drain() {
	p.draining.Store(true)
	p.route.poke()
}

// shutdown closes every connection and ends every dial and hold; it
// returns how many connections it closed.
func (p *proxy) shutdown() int {
	p.kill()
	return p.reg.closeAll()
}

// done is called once per accepted connection on listener i, when it is
// closed.
func (p *proxy) done(i int) {
	p.m.active[i].Dec()
	if p.slots != nil {
		<-p.slots
	}
	p.open.Done()
}

// serve accepts connections on ln for the listener with index i until ctx
// ends. Accept errors other than a closed listener are logged and retried
// with backoff (5ms doubling to 1s, as net/http does), so a transient
// shortage such as EMFILE never gives up the port.
//
// With -max_conns, a connection is accepted first and then waits for a
// slot: a loop that waited for a slot before it accepted would hold it
// while no client comes, and starve the other ports. At the limit each
// port holds one accepted connection; the rest wait in the kernel's
// backlog.
func (p *proxy) serve(ctx context.Context, ln *net.TCPListener, i int) error {
	// Closing the listener unblocks AcceptTCP when ctx ends; serve also
	// closes it on its way out, whichever way it leaves.
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer func() {
		stop()
		_ = ln.Close()
	}()
	stopped := ctx.Done() // a kept handler stops waiting with this loop
	var backoff time.Duration
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			p.log.Error("accept failed", "port", p.ports[i].host, "err", err, "backoff", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return nil
			}
			continue
		}
		backoff = 0
		if !p.takeSlot(ctx, i) {
			_ = c.Close()
			return nil
		}
		p.m.accepted[i].Inc()
		p.m.active[i].Inc()
		p.open.Add(1)
		select {
		case p.idle <- accepted{c, i, stopped}: // a handler whose stack has grown takes it
		default:
			go p.handler(accepted{c, i, stopped})
		}
	}
}

// takeSlot waits for a -max_conns slot for a connection of listener i,
// counting the ones that must wait; false if ctx ends first.
func (p *proxy) takeSlot(ctx context.Context, i int) bool {
	if p.slots == nil {
		return true
	}
	select {
	case p.slots <- struct{}{}:
		return true
	default:
	}
	p.m.limited[i].Inc()
	select {
	case p.slots <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

// accepted is a connection for a handler: the client, its listener, and
// the end of the accept loop that took it.
type accepted struct {
	c       *net.TCPConn
	i       int
	stopped <-chan struct{}
}

// maxIdleHandlers bounds the handlers kept waiting for a connection.
const maxIdleHandlers = 8

// handler handles a, then waits for another connection while fewer than
// maxIdleHandlers wait and the loop that sent a still accepts (a proxy
// that stops accepting and whose connections all finish in time never
// calls shutdown: p.life alone would keep them for good). Dialing grows a
// goroutine's stack from 2 to 8 KiB (two copies of it); a kept handler
// grows it again only after a GC has shrunk it, not once per connection,
// and a connection's copy loops still start on small stacks.
func (p *proxy) handler(a accepted) {
	for {
		p.handle(a.c, a.i)
		if p.idlers.Add(1) > maxIdleHandlers {
			p.idlers.Add(-1)
			return
		}
		more := false
		select {
		case a = <-p.idle:
			more = true
		case <-a.stopped:
		case <-p.life.Done():
		}
		p.idlers.Add(-1)
		if !more {
			return
		}
	}
}

// handle forwards one client connection.
func (p *proxy) handle(client *net.TCPConn, i int) {
	pr := &pair{client: client, proxy: p, port: i}
	pr.committed = p.replayMax == 0 // nothing kept, nothing to resend
	pr.up.sent, pr.down.sent = p.m.bytesUp[i], p.m.bytesDown[i]
	if !p.reg.add(pr) { // shutting down
		p.m.failed[i].Inc()
		_ = client.Close()
		p.done(i)
		return
	}
	if _, err := p.establish(pr, nil); err != nil {
		p.m.failed[i].Inc()
		p.notForwarded(i, err)
		pr.close()
		return
	}
	// Two fresh goroutines: this one's stack grew while it dialed, and
	// an idle pair should hold only small ones.
	pr.running.Store(2)
	go pr.clientToServer()
	go pr.serverToClient()
}

// notForwarded logs a connection that could not be forwarded, with why,
// at most once a second, so that a burst of clients cannot flood the log.
func (p *proxy) notForwarded(i int, err error) {
	now := time.Now().Unix()
	if last := p.lastDrop.Load(); last != now && p.lastDrop.CompareAndSwap(last, now) {
		p.log.Warn("connection closed: not forwarded", "port", p.ports[i].host, "err", err)
	}
}

// establish connects pr to a container, at accept and when the pair moves
// (from: the container it leaves, which is never dialed again for it). It
// dials the current backend, holding the connection up to -hold_timeout
// while there is none or the dial fails; starts the connection with the
// PROXY header; puts the pair on the backend, which must not be sealed;
// and only then sends what the client has sent so far, so that no
// container that cannot keep the pair ever reads its bytes.
func (p *proxy) establish(pr *pair, from *backend) (*backend, error) {
	start := time.Now()
	deadline := start.Add(p.hold)
	var err error
	for range maxMoves {
		var b *backend
		var server *net.TCPConn
		b, server, err = p.connect(pr.port, from, deadline)
		if err != nil {
			break
		}
		if err = pr.sendHeader(server); err != nil {
			_ = server.Close()
			continue
		}
		if !p.reg.assign(pr, b, server) {
			_ = server.Close()
			if pr.cut.Load() {
				err = errClosed
				break
			}
			err = fmt.Errorf("container %s retired while connecting", b.short())
			continue // b was sealed between load and assign: the next one
		}
		if err = pr.resend(server); err != nil {
			// The new container reset the connection before it read
			// everything: it cannot have answered, so another one may.
			p.reg.release(pr)
			_ = server.Close()
			from = b
			continue
		}
		return b, nil
	}
	if wait := time.Since(start); wait >= time.Millisecond {
		err = fmt.Errorf("held %v: %w", wait.Round(time.Millisecond), err)
	}
	return nil, err
}

var (
	errNoBackend = errors.New("no ready container")
	errClosed    = errors.New("closed by the proxy")
)

// connect dials the current backend for listener i, unless it is skip.
// While there is none, or the dial fails, it waits for a change (or
// retries every retryDial) until deadline. Its error says what failed
// last: no backend, or the dial's own error.
func (p *proxy) connect(i int, skip *backend, deadline time.Time) (*backend, *net.TCPConn, error) {
	if b := p.route.load(); b != nil && b != skip {
		server, err := p.dial(p.life, b, i)
		if err == nil || p.hold <= 0 {
			return b, server, err
		}
		return p.connectHeld(i, b, skip, deadline, err)
	}
	if p.hold <= 0 {
		return nil, nil, errNoBackend
	}
	return p.connectHeld(i, nil, skip, deadline, errNoBackend)
}

// connectHeld waits until deadline for a backend that can be dialed: it
// tries again as soon as the backend changes, and every retryDial while
// the one that failed (b) is still current.
func (p *proxy) connectHeld(i int, b, skip *backend, deadline time.Time, err error) (*backend, *net.TCPConn, error) {
	ctx, cancel := context.WithDeadline(p.life, deadline)
	defer cancel()
	for {
		if b == nil && p.draining.Load() {
			// No container will come: the deployer has stopped.
			return nil, nil, fmt.Errorf("shutting down: %w", err)
		}
		var retry <-chan time.Time
		if b != nil {
			retry = time.After(retryDial)
		}
		p.route.wait(ctx, b, retry)
		switch {
		case p.life.Err() != nil:
			return nil, nil, fmt.Errorf("shutting down: %w", err)
		case ctx.Err() != nil:
			return nil, nil, err
		}
		if b = p.route.load(); b == nil || b == skip {
			b, err = nil, errNoBackend
			continue
		}
		server, derr := p.dial(ctx, b, i)
		if derr == nil {
			return b, server, nil
		}
		if ctx.Err() == nil || errors.Is(err, errNoBackend) {
			err = derr // not the hold's own deadline cutting a dial short
		}
	}
}

// dial connects to backend b for listener i. (Dialer.DialTCP with a zero
// local address binds before it connects, which pins an ephemeral port to
// no destination; DialContext lets connect pick it, per destination.)
func (p *proxy) dial(ctx context.Context, b *backend, i int) (*net.TCPConn, error) {
	c, err := p.dialer.DialContext(ctx, "tcp", b.dials[i])
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}
