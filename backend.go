package main

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// backend is one container that connections are sent to. The pairs it
// carries are in the proxy's registry (see conns), so that they can be
// closed before the container is removed: once its network is gone the
// kernel sends no reset, and a connection the proxy does not close itself
// would hang.
type backend struct {
	id    string     // full container id
	ip    netip.Addr // the container's address
	dials []string   // "IP:port" to dial for each listener, by index

	mu     sync.Mutex
	reg    *conns // the registry its pairs are in, once it carries one
	n      int    // pairs it carries
	sealed bool   // no pair may join (superseded, or retired)
	idle   chan struct{}
}

func (b *backend) short() string {
	if b == nil {
		return ""
	}
	return shortID(b.id)
}

func newBackend(id string, ip netip.Addr, ports []portMap) *backend {
	b := &backend{id: id, ip: ip, dials: make([]string, len(ports))}
	for i, p := range ports {
		b.dials[i] = netip.AddrPortFrom(ip, p.container).String()
	}
	return b
}

// join counts one more pair on b, in reg; it fails once b is sealed.
// Called with reg.mu held.
func (b *backend) join(reg *conns) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sealed {
		return false
	}
	b.reg = reg
	b.n++
	return true
}

// leave counts one pair less. Called with reg.mu held.
func (b *backend) leave() {
	b.mu.Lock()
	defer b.mu.Unlock()
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
	b.sealed = true
}

// unseal lets connections join b again (a rollback).
func (b *backend) unseal() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sealed = false
}

// closeAll closes every connection b carries and lets no new one join.
// It returns how many it closed.
func (b *backend) closeAll() int {
	b.mu.Lock()
	b.sealed = true
	reg := b.reg
	b.mu.Unlock()
	if reg == nil {
		return 0 // it never carried a connection
	}
	return reg.closeOn(b)
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

// poke wakes every waiter without a change, so that they look again.
func (r *router) poke() {
	r.mu.Lock()
	defer r.mu.Unlock()
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
		return r.cur.Load() != old
	case <-timer:
		return false
	case <-ctx.Done():
		return false
	}
}
