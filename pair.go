package main

import (
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/pires/go-proxyproto"
)

// A server that ends a connection before it answered anything did not
// serve it: one that closes its listener as it shuts down resets the
// connections waiting in its accept queue, and Go's net/http, shutting
// down, reads a new request and closes the connection unanswered. A later
// dial can serve those bytes. So until the server sends its first byte the
// proxy keeps what the client sent, up to -replay_bytes, and when the
// server closes or resets the connection unanswered it resends them to the
// next container that serves, at most maxReplays times. Once the server
// answers, or the client has sent more, the pair is committed: its bytes
// are only spliced.
const (
	maxReplays         = 5
	defaultReplayBytes = 16 << 10
)

// pair is one client connection and the connection it was forwarded to.
type pair struct {
	client     *net.TCPConn
	server     *net.TCPConn // changes only in replace, under mu, while no backend tracks the pair
	backend    *backend
	prev, next *pair // in backend.conns
	tracked    bool  // by backend; guarded by backend.mu
	up, down   copier
	running    atomic.Int32 // copy directions still running
	proxy      *proxy
	ctx        context.Context
	port       int // the listener's index

	committed atomic.Bool // no replay any more
	mu        sync.Mutex  // guards replay, replays, and server while not committed
	replay    []byte      // the client's bytes, kept until committed
	replays   int
}

// clientToServer copies the client's bytes to the server.
func (p *pair) clientToServer() {
	err := p.up.from(p.client)
	if err == nil {
		err = p.forward()
	}
	p.commit()
	p.halfClose(p.server, p.client, err)
}

// forward keeps the client's bytes for a replay until the pair is
// committed, then splices the rest.
func (p *pair) forward() error {
	for {
		n, err := p.up.wait()
		if err != nil || n == 0 {
			return err
		}
		server, kept, err := p.keep(n)
		if err != nil {
			return err
		}
		if kept {
			p.up.sent.Add(float64(n))
			continue
		}
		if _, err := p.up.send(server, n); err != nil {
			return err
		}
		_, err = p.up.copy(server)
		return err
	}
}

// keep reads the n queued client bytes into the replay buffer and writes
// them to the server, unless the pair is committed, or would hold more than
// replayMax; then it commits and returns the server to splice to.
func (p *pair) keep(n int) (server *net.TCPConn, kept bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.committed.Load() || len(p.replay)+n > p.proxy.replayMax {
		p.commitLocked()
		return p.server, false, nil
	}
	start := len(p.replay)
	p.replay = slices.Grow(p.replay, n)[:start+n]
	if _, err := io.ReadFull(p.client, p.replay[start:]); err != nil {
		return nil, false, err
	}
	// A write error is the server's reset, which serverToClient sees and
	// answers with a replay of everything kept, this too.
	_, _ = p.server.Write(p.replay[start:])
	return p.server, true, nil
}

func (p *pair) commit() {
	if p.committed.Load() {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.commitLocked()
}

func (p *pair) commitLocked() {
	p.committed.Store(true)
	p.replay = nil
}

// serverToClient copies the server's bytes to the client, replacing a
// server that resets the connection before its first byte.
func (p *pair) serverToClient() {
	var err error
	for {
		if err = p.down.from(p.server); err != nil {
			break
		}
		var n int
		if n, err = p.down.wait(); err == nil && n > 0 {
			p.commit()
			if _, err = p.down.send(p.client, n); err == nil {
				_, err = p.down.copy(p.client)
			}
			break
		}
		// EOF or reset before the first byte.
		if (err != nil && !errors.Is(err, syscall.ECONNRESET)) || !p.replace() {
			break
		}
	}
	p.halfClose(p.client, p.server, err)
}

// replace moves the pair to a new connection to the current backend (which
// may still be the same container: connect holds and retries like for a
// new client) and resends the client's bytes. It reports whether it did.
func (p *pair) replace() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.committed.Load() || p.replays >= maxReplays {
		return false
	}
	p.replays++
	from := p.backend
	from.untrack(p)
	_ = p.server.Close()
	// Never back to the container that closed it unanswered: a container
	// that still takes connections meant it (or would act twice). Wait,
	// up to -hold_timeout, for another one to serve: the deployer moves on
	// when the one shutting down stops or fails its status check.
	ctx, cancel := context.WithTimeout(p.ctx, p.proxy.hold)
	defer cancel()
	for p.proxy.route.load() == from {
		if !p.proxy.route.wait(ctx, from, nil) {
			return false
		}
	}
	for range 3 {
		b, server, err := p.proxy.connect(p.ctx, p.port)
		if err != nil || b == from {
			if server != nil {
				_ = server.Close()
			}
			break
		}
		if err := p.sendHeader(server); err != nil {
			_ = server.Close()
			continue
		}
		if _, err := server.Write(p.replay); err != nil {
			_ = server.Close()
			continue
		}
		p.server, p.backend = server, b
		if b.track(p) {
			p.proxy.log.Debug("replayed an unanswered connection", "from", shortID(from.id), "container", shortID(b.id), "bytes", len(p.replay))
			return true
		}
		_ = server.Close()
	}
	return false
}

// sendHeader starts a backend connection with a PROXY protocol header
// carrying the client's address, if -proxy_protocol asks for one. It is
// written on the raw connection before any copying, so splice stays on.
func (p *pair) sendHeader(server *net.TCPConn) error {
	if p.proxy.proxyProtocol == 0 {
		return nil
	}
	h := proxyproto.HeaderProxyFromAddrs(byte(p.proxy.proxyProtocol), p.client.RemoteAddr(), p.client.LocalAddr())
	_, err := h.WriteTo(server)
	return err
}

// halfClose passes EOF on from src to dst; after a real error it closes
// both ends at once. The direction that finishes last closes the pair
// (a close sends its FIN too, so it skips the half-close).
func (p *pair) halfClose(dst, src *net.TCPConn, err error) {
	last := p.running.Add(-1) == 0
	switch {
	case err != nil:
		_ = dst.Close()
		_ = src.Close()
	case !last:
		_ = dst.CloseWrite()
	}
	if last {
		_ = p.client.Close()
		_ = p.server.Close()
		p.backend.untrack(p)
		p.proxy.done(p.port)
	}
}
