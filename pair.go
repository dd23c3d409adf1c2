package main

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pires/go-proxyproto"
)

// The resend rule. A client's bytes go to a second container only where
// no server application can have read them: when the dial fails or is
// refused (nothing was sent), and when the server resets the connection
// before it answered anything. A reset before the first byte is what the
// kernel sends for a connection still in the accept queue of a listener
// that closes (the container is shutting down): the bytes sat in a socket
// no process had accepted. Never after a FIN from the server (it may have
// read the bytes, acted on them and closed), never after it answered, and
// never on a connection the proxy closes itself (retirement, shutdown).
// RFC 9110 §9.2.2: a proxy must not retry a request on its own when the
// server may have acted on it.
//
// So until the server's first byte (or FIN), the proxy keeps what the
// client sent, up to -replay_bytes, out of a budget shared by all
// connections; past either, the pair keeps nothing and is committed.
const (
	maxMoves           = 3 // resends of one connection, each to another container
	defaultReplayBytes = 16 << 10
	maxReplayBytes     = 1 << keptMaxShift // -replay_bytes is capped here: 1 MiB
	replayBudget       = 64 << 20          // what all connections keep together
)

// pair is one client connection and the connection it was forwarded to.
// Two goroutines run it, one per direction; the one that finishes last
// closes it. The server side also moves the pair to another container when
// the resend rule allows it.
type pair struct {
	client  *net.TCPConn
	server  *net.TCPConn // set by conns.assign; replaced only when the pair moves
	backend *backend     // the container carrying it, nil while none does; guarded by reg.mu
	reg     *conns       // the registry it is in, from accept to close
	prev    *pair        // in reg
	next    *pair
	proxy   *proxy
	port    int // the listener's index
	header  int // bytes of PROXY protocol header on the current server connection

	up, down copier
	running  atomic.Int32 // directions still running
	cut      atomic.Bool  // closed by the proxy: never resend

	// The resend state, shared by the two directions. mu is never held
	// across a blocking call.
	mu        sync.Mutex
	committed bool          // nothing is kept or resent any more
	kept      []byte        // the client's bytes since the dial, until committed
	buf       *[]byte       // kept's memory, from a pool (see keep.go)
	busy      bool          // the client side reads into kept or writes from it
	moving    chan struct{} // while the server side moves the pair; closed when done
	clientEOF bool          // the client half-closed
	resetOn   *net.TCPConn  // the server connection whose reset a write of the client side read
	moves     int
}

// clientToServer copies the client's bytes to the server.
func (p *pair) clientToServer() {
	err := p.up.from(p.client)
	if err == nil {
		err = p.forward()
	}
	p.finish(err, func() {
		if server := p.clientDone(); server != nil {
			_ = server.CloseWrite()
		}
	})
}

// forward keeps the client's bytes for a resend, writing each to the
// server as it comes, until the pair is committed; then it splices the
// rest.
func (p *pair) forward() error {
	for {
		n, err := p.up.wait()
		if err != nil || n == 0 {
			return err
		}
		room, server := p.room(n)
		if room == nil {
			if _, err := p.up.send(server, n); err != nil {
				return err
			}
			_, err = p.up.copy(server)
			return err
		}
		m, err := p.up.read(room)
		p.up.sent.Add(float64(m))
		server = p.keep(m)
		if server != nil && m > 0 {
			// A failed write is the server's reset or FIN, which the
			// server side acts on. The write may be the call that
			// reads a reset, so the server side then sees a plain
			// EOF: tell it.
			if _, werr := server.Write(room[:m]); errors.Is(werr, syscall.ECONNRESET) {
				p.noteReset(server)
			}
		}
		p.idle()
		if err != nil {
			return err
		}
	}
}

// room returns where the next n client bytes are kept, and marks the
// client side busy with it; or, once the pair is committed (or would keep
// more than it may), nil and the server to splice to.
func (p *pair) room(n int) ([]byte, *net.TCPConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for !p.committed && p.moving != nil && len(p.kept)+n > cap(p.kept) {
		p.waitMoved() // the move reads kept: grow it only after
	}
	if !p.committed && !p.proxy.grow(p, n) {
		p.commitLocked()
	}
	if p.committed {
		for p.moving != nil { // the server side is changing: wait for the new one
			p.waitMoved()
		}
		return nil, p.server
	}
	p.busy = true
	return p.kept[len(p.kept) : len(p.kept)+n], nil
}

// waitMoved waits, with p.mu held, for the current move to end.
func (p *pair) waitMoved() {
	moving := p.moving
	p.mu.Unlock()
	<-moving
	p.mu.Lock()
}

// keep adds m bytes read into the room to kept, and returns the server to
// write them to: nil while the pair moves (the move resends them).
func (p *pair) keep(m int) *net.TCPConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.kept = p.kept[:len(p.kept)+m]
	if p.moving != nil {
		return nil
	}
	return p.server
}

// idle ends the client side's use of kept.
func (p *pair) idle() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.busy = false
	p.freeLocked()
}

// clientDone records the client's EOF and returns the server to pass it
// on to: nil while the pair moves (the move passes it on).
func (p *pair) clientDone() *net.TCPConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clientEOF = true
	if p.moving != nil {
		return nil
	}
	return p.server
}

// noteReset records that a write to server read its reset (ECONNRESET,
// which Linux reports only for a reset with no FIN before it).
func (p *pair) noteReset(server *net.TCPConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.resetOn = server
}

// resetSeen reports whether the client side's write read a reset of
// server, the current one: a note about an earlier connection says
// nothing of this one.
func (p *pair) resetSeen(server *net.TCPConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.resetOn == server
}

// finUnread tells whether the server's FIN, before any answer, came from a
// socket that was closed before it read any of the client's bytes (see
// closedUnread). If the client side has sent nothing yet (the FIN may
// beat bytes already queued by the client), it waits for them a little:
// only they can show the server's socket gone.
func (p *pair) finUnread() bool {
	deadline := time.Now().Add(unreadWait)
	for {
		p.mu.Lock()
		committed, kept := p.committed, len(p.kept)
		p.mu.Unlock()
		switch {
		case committed:
			return false
		case kept > 0:
			return closedUnread(p.server, p.header, deadline)
		case time.Now().After(deadline):
			return false
		}
		time.Sleep(unreadPoll) // bounded by deadline
	}
}

// unreadWait bounds how long a FIN before any answer waits to be told
// apart (see finUnread): a round trip on a local bridge is well under a
// millisecond.
const (
	unreadWait = 50 * time.Millisecond
	unreadPoll = 200 * time.Microsecond
)

// commit ends the resend phase: the server answered, or sent FIN.
func (p *pair) commit() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.commitLocked()
}

func (p *pair) commitLocked() {
	p.committed = true
	p.freeLocked()
}

// freeLocked gives kept's memory back once nothing can use it.
func (p *pair) freeLocked() {
	if p.committed && !p.busy && p.moving == nil {
		p.proxy.free(p)
	}
}

// serverToClient copies the server's bytes to the client. Before the
// server's first byte, a reset moves the pair to another container (see
// the resend rule); a FIN is passed on like any other.
func (p *pair) serverToClient() {
	var err error
	for {
		if err = p.down.from(p.server); err != nil {
			break
		}
		var n int
		n, err = p.down.wait()
		if err == nil && n == 0 && (p.resetSeen(p.server) || p.finUnread()) {
			err = syscall.ECONNRESET // nothing was read: as good as a reset
		}
		if err == nil {
			p.commit()
			if n > 0 {
				if _, err = p.down.send(p.client, n); err == nil {
					_, err = p.down.copy(p.client)
				}
			}
			break
		}
		if !errors.Is(err, syscall.ECONNRESET) || !p.move() {
			break
		}
	}
	p.finish(err, func() { _ = p.client.CloseWrite() })
}

// move takes the pair off the container that reset it and connects it to
// another one, which gets every byte the client has sent. It reports
// whether it did.
func (p *pair) move() bool {
	p.mu.Lock()
	if p.committed || p.cut.Load() || p.moves >= maxMoves {
		p.mu.Unlock()
		return false
	}
	p.moves++
	p.moving = make(chan struct{})
	p.mu.Unlock()
	defer p.moved()

	from := p.reg.release(p)
	_ = p.server.Close()
	to, err := p.proxy.establish(p, from)
	if err != nil {
		p.proxy.log.Warn("connection reset before an answer, not resent", "port", p.proxy.ports[p.port].host,
			"from", from.short(), "err", err)
		return false
	}
	p.proxy.log.Debug("resent a connection reset before an answer", "port", p.proxy.ports[p.port].host,
		"from", from.short(), "container", to.short(), "addr", to.ip, "moves", p.moves)
	return true
}

// moved ends a move, whichever way it went.
func (p *pair) moved() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.moving != nil {
		close(p.moving)
		p.moving = nil
	}
	p.freeLocked()
}

// resend writes what the client has sent so far to server, the pair's new
// connection, until it has caught up; then the client side writes to
// server itself, and a move is over.
func (p *pair) resend(server *net.TCPConn) error {
	sent := 0
	for {
		p.mu.Lock()
		if sent == len(p.kept) {
			eof := p.clientEOF
			if p.moving != nil {
				close(p.moving)
				p.moving = nil
			}
			p.mu.Unlock()
			if eof {
				return server.CloseWrite()
			}
			return nil
		}
		rest := p.kept[sent:] // the client side only appends beyond it
		p.mu.Unlock()
		n, err := server.Write(rest)
		sent += n
		if err != nil {
			return err
		}
	}
}

// sendHeader starts a backend connection with a PROXY protocol header
// carrying the client's address, if -proxy_protocol asks for one. It is
// written on the raw connection before any copying, so splice stays on.
func (p *pair) sendHeader(server *net.TCPConn) error {
	p.header = 0
	if p.proxy.proxyProtocol == 0 {
		return nil
	}
	h := proxyproto.HeaderProxyFromAddrs(byte(p.proxy.proxyProtocol), p.client.RemoteAddr(), p.client.LocalAddr())
	n, err := h.WriteTo(server)
	p.header = int(n)
	return err
}

// finish ends one direction: at EOF it passes the EOF on (passEOF), after
// an error it closes both ends at once, so the other direction ends too.
// The direction that ends last closes the pair; its close sends the FIN,
// so it skips the half-close.
func (p *pair) finish(err error, passEOF func()) {
	if err != nil {
		p.reg.shutOne(p) // one side is gone: nothing to resend to
	}
	last := p.running.Add(-1) == 0
	if err == nil && !last {
		passEOF()
	}
	if last {
		p.close()
	}
}

// close closes both ends and takes the pair out of the registry.
func (p *pair) close() {
	_ = p.client.Close()
	if p.server != nil {
		_ = p.server.Close()
	}
	p.reg.remove(p)
	p.mu.Lock()
	p.committed, p.busy = true, false
	p.freeLocked()
	p.mu.Unlock()
	p.proxy.done(p.port)
}

// shut closes a pair for the proxy (retirement, shutdown): both ends
// close, so both directions end, and nothing is resent. Called with
// reg.mu held, which orders it with assign's change of server.
func (p *pair) shut() {
	p.cut.Store(true)
	if p.client != nil {
		_ = p.client.Close()
	}
	if p.server != nil {
		_ = p.server.Close()
	}
}
