package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// backend is one container that connections are sent to, with the
// connections it carries, so that they can be closed before the container is
// removed: once its network is gone the kernel sends no reset, and a
// connection the proxy does not close itself would hang.
type backend struct {
	id    string     // full container id
	ip    netip.Addr // the container's address
	dials []string   // "IP:port" to dial for each listener, by index

	mu     sync.Mutex
	conns  *pair // open pairs, a doubly linked list through pair.prev/next
	n      int   // len(conns)
	closed bool  // sealed: no pair may join (superseded, or retired)
	idle   chan struct{}
}

func newBackend(id string, ip netip.Addr, ports []portMap) *backend {
	b := &backend{id: id, ip: ip, dials: make([]string, len(ports))}
	for i, p := range ports {
		b.dials[i] = netip.AddrPortFrom(ip, p.container).String()
	}
	return b
}

// track adds p to the connections b carries. It fails once b is closed.
func (b *backend) track(p *pair) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	p.tracked = true
	p.next = b.conns
	if b.conns != nil {
		b.conns.prev = p
	}
	b.conns = p
	b.n++
	return true
}

func (b *backend) untrack(p *pair) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !p.tracked {
		return
	}
	p.tracked = false
	if p.prev != nil {
		p.prev.next = p.next
	} else if b.conns == p {
		b.conns = p.next
	}
	if p.next != nil {
		p.next.prev = p.prev
	}
	p.prev, p.next = nil, nil
	b.n--
	if b.n == 0 && b.idle != nil {
		close(b.idle)
		b.idle = nil
	}
}

// count reports how many connections b carries.
func (b *backend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n
}

// drained returns a channel that is closed once b carries no connection.
func (b *backend) drained() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.n == 0 {
		return closedChan
	}
	if b.idle == nil {
		b.idle = make(chan struct{})
	}
	return b.idle
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// seal lets no new connection join b: it is no longer the one to serve.
func (b *backend) seal() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
}

// unseal lets connections join b again (a rollback).
func (b *backend) unseal() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = false
}

// closeAll closes every connection b carries and lets no new one join.
// It returns how many it closed.
func (b *backend) closeAll() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	n := 0
	for p := b.conns; p != nil; p = p.next {
		_ = p.client.Close()
		_ = p.server.Close()
		n++
	}
	return n
}

// router holds the backend for new connections. The hot path is one atomic
// load; the mutex and channel serve only connections that wait for a
// backend to appear or change.
type router struct {
	cur     atomic.Pointer[backend]
	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every store
}

func newRouter() *router { return &router{changed: make(chan struct{})} }

func (r *router) load() *backend { return r.cur.Load() }

func (r *router) store(b *backend) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cur.Store(b)
	close(r.changed)
	r.changed = make(chan struct{})
}

// wait blocks until the backend is no longer old, or until timer fires or
// ctx ends; it reports whether the backend changed.
func (r *router) wait(ctx context.Context, old *backend, timer <-chan time.Time) bool {
	r.mu.Lock()
	changed := r.changed
	cur := r.cur.Load()
	r.mu.Unlock()
	if cur != old {
		return true
	}
	select {
	case <-changed:
		return true
	case <-timer:
		return false
	case <-ctx.Done():
		return false
	}
}

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
	open          sync.WaitGroup // pairs not yet closed
	slots         chan struct{}  // -max_conns: one token per open connection

	lastDrop atomic.Int64 // unix second of the last "no backend" log line
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
		dialer:    net.Dialer{Timeout: 5 * time.Second, KeepAlive: -1},
		replayMax: defaultReplayBytes,
		m:         newMetrics(ports),
		log:       log,
	}
	if maxConns > 0 {
		p.slots = make(chan struct{}, maxConns)
	}
	if hold > 0 && hold < p.dialer.Timeout {
		p.dialer.Timeout = hold // one dial never outlasts the hold
	}
	return p
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
func (p *proxy) serve(ctx context.Context, ln *net.TCPListener, i int) error {
	// Closing the listener unblocks AcceptTCP when ctx ends; serve also
	// closes it on its way out, whichever way it leaves.
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer func() {
		stop()
		_ = ln.Close()
	}()
	var backoff time.Duration
	for {
		if p.slots != nil {
			// At the limit, stop accepting: new clients wait in the
			// kernel's backlog rather than being refused by us.
			select {
			case p.slots <- struct{}{}:
			case <-ctx.Done():
				return nil
			}
		}
		c, err := ln.AcceptTCP()
		if err != nil {
			if p.slots != nil {
				<-p.slots
			}
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
		p.m.accepted[i].Inc()
		p.m.active[i].Inc()
		p.open.Add(1)
		go p.handle(ctx, c, i)
	}
}

// handle forwards one client connection.
func (p *proxy) handle(ctx context.Context, client *net.TCPConn, i int) {
	pr := &pair{client: client, proxy: p, ctx: ctx, port: i}
	pr.committed.Store(p.replayMax == 0) // nothing kept, nothing to resend
	pr.up.sent, pr.down.sent = p.m.bytesUp[i], p.m.bytesDown[i]
	for range 3 {
		b, server, err := p.connect(ctx, i)
		if err != nil {
			p.noBackend(i, err)
			break
		}
		pr.server, pr.backend = server, b
		if err := pr.sendHeader(server); err != nil {
			_ = server.Close()
			continue
		}
		if b.track(pr) {
			// Two fresh goroutines: this one's stack grew while it
			// dialed, and an idle pair should hold only small ones.
			pr.running.Store(2)
			go pr.clientToServer()
			go pr.serverToClient()
			return
		}
		// b was retired between load and track: dial the new one.
		_ = server.Close()
	}
	p.m.failed[i].Inc()
	_ = client.Close()
	p.done(i)
}

// noBackend logs a connection that could not be forwarded, at most once a
// second, so that a burst of clients cannot flood the log.
func (p *proxy) noBackend(i int, err error) {
	now := time.Now().Unix()
	if last := p.lastDrop.Load(); last != now && p.lastDrop.CompareAndSwap(last, now) {
		p.log.Warn("connection closed: no ready container", "port", p.ports[i].host, "err", err)
	}
}

// connect dials the current backend for listener i. When there is none, or
// the dial fails, it holds the connection (see connectHeld).
func (p *proxy) connect(ctx context.Context, i int) (*backend, *net.TCPConn, error) {
	b := p.route.load()
	if b == nil {
		if p.hold <= 0 {
			return nil, nil, errNoBackend
		}
		return p.connectHeld(ctx, i, nil, p.hold)
	}
	start := time.Now()
	server, err := p.dial(ctx, b, i)
	if err != nil && p.hold > 0 {
		return p.connectHeld(ctx, i, b, p.hold-time.Since(start))
	}
	return b, server, err
}

// connectHeld waits up to budget for a backend that can be dialed: it
// tries again as soon as the backend changes, and every retryDial while
// the one that failed is still current.
func (p *proxy) connectHeld(ctx context.Context, i int, b *backend, budget time.Duration) (*backend, *net.TCPConn, error) {
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	err := errNoBackend
	for {
		var retry <-chan time.Time
		if b != nil {
			retry = time.After(retryDial)
		}
		p.route.wait(ctx, b, retry)
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("held %v: %w", p.hold, err)
		}
		if b = p.route.load(); b == nil {
			err = errNoBackend
			continue
		}
		var server *net.TCPConn
		if server, err = p.dial(ctx, b, i); err == nil {
			return b, server, nil
		}
	}
}

var errNoBackend = errors.New("no ready container")

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
