package main

import (
	"net"
	"sync"
)

// conns is the registry of a proxy's connections. A pair is in it from
// accept to close, carried by exactly one backend or, while it dials, waits
// for a container or moves to another one, by none. Retirement closes what
// it holds for one backend, shutdown everything: no pair can be missed by
// either, whatever state it is in.
type conns struct {
	mu      sync.Mutex
	head    *pair // a doubly linked list through pair.prev/next
	n       int
	closing bool // shut down: every pair closed, none may join
}

func newConns() *conns { return &conns{} }

// add registers p; it fails once the registry is shut down.
func (r *conns) add(p *pair) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closing {
		return false
	}
	p.reg = r
	p.next = r.head
	if r.head != nil {
		r.head.prev = p
	}
	r.head = p
	r.n++
	return true
}

// remove takes p out, at its close.
func (r *conns) remove(p *pair) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p.reg != r {
		return
	}
	r.releaseLocked(p)
	if p.prev != nil {
		p.prev.next = p.next
	} else {
		r.head = p.next
	}
	if p.next != nil {
		p.next.prev = p.prev
	}
	p.prev, p.next, p.reg = nil, nil, nil
	r.n--
}

// assign puts p on b, forwarded to server (nil: p.server as it is). It
// fails if b is sealed, if the registry is shut down, or if p was closed
// by the proxy: the caller then closes server.
func (r *conns) assign(p *pair, b *backend, server *net.TCPConn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closing || p.cut.Load() || !b.join(r) {
		return false
	}
	r.releaseLocked(p)
	p.backend = b
	if server != nil {
		p.server = server
	}
	return true
}

// release takes p off its backend, which it returns: p is moving to
// another one.
func (r *conns) release(p *pair) *backend {
	r.mu.Lock()
	defer r.mu.Unlock()
	b := p.backend
	r.releaseLocked(p)
	return b
}

// shutOne closes p for the proxy (see pair.shut).
func (r *conns) shutOne(p *pair) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p.shut()
}

func (r *conns) releaseLocked(p *pair) {
	if p.backend != nil {
		p.backend.leave()
		p.backend = nil
	}
}

// closeOn closes every pair on b and returns how many.
func (r *conns) closeOn(b *backend) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for p := r.head; p != nil; p = p.next {
		if p.backend == b {
			p.shut()
			n++
		}
	}
	return n
}

// closeAll shuts the registry: it closes every pair and lets none join.
// It returns how many it closed.
func (r *conns) closeAll() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closing = true
	for p := r.head; p != nil; p = p.next {
		p.shut()
	}
	return r.n
}

// count reports how many pairs are open.
func (r *conns) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}
