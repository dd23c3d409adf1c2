package main

import (
	"errors"
	"io"
	"net"
	"sync"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
)

// copier moves the bytes of one direction of a pair. It waits for the
// source to be readable holding nothing, so that an idle connection costs
// two file descriptors and no buffer. Then it reads what came into a
// pooled buffer (one read, then one write: what nginx pays per message),
// and the buffer goes back to the pool as soon as the bytes are written.
// When a read fills the whole buffer, more is probably queued: then it
// looks first, and splices the backlog from socket to socket without
// copying it through user space (Linux; see copy_linux.go), until the
// backlog is small again.
//
// After wait reports n bytes, the caller takes them with send (to another
// connection) or read (into a buffer of its own). Every loop over wait
// makes progress: wait returns bytes, EOF or an error, or blocks.
//
// Inside copy, ready also writes each message on to the destination
// itself, without blocking, and goes on reading in the same
// RawConn.Read (see pass). That is what lets it skip the read that says
// EAGAIN: the poller is armed for the whole call, so once a read leaves
// nothing queued (TCP_INQ says so, and says a FIN is pending too), any
// byte that comes later wakes it.
type copier struct {
	src    *net.TCPConn
	raw    syscall.RawConn
	check  func(fd uintptr) bool // c.ready, bound once so that waiting allocates nothing
	buf    *[bufSize]byte        // from bufs while it holds bytes, else nil
	data   []byte                // what wait read that the caller has not taken
	queued int                   // bytes queued in the socket, to splice (bulk)
	err    error                 // set by ready
	sent   prometheus.Counter    // bytes copied
	out    syscall.RawConn       // copy's destination, which ready writes to; nil outside copy
	write  func(fd uintptr) bool // c.writeOut, bound once
	bulk   bool                  // the last read filled buf: look before reading
	passed bool                  // ready wrote what it read to out: nothing to take
	inq    bool                  // src has TCP_INQ on: each read tells what stays queued
	noInq  bool                  // and setting it failed: do not try again
}

// bufSize is the size of a pooled buffer: nginx's proxy_buffer_size.
// Once a read fills it, the copier splices what is queued while that is
// spliceMin or more: below it a copy through the buffer costs less than
// two splices through a pipe.
const (
	bufSize   = 16 << 10
	spliceMin = 2 << 10
)

var bufs = sync.Pool{New: func() any { return new([bufSize]byte) }}

// from makes src the connection c reads.
func (c *copier) from(src *net.TCPConn) error {
	raw, err := src.SyscallConn()
	if err != nil {
		return err
	}
	c.src, c.raw = src, raw
	c.release()
	c.data, c.bulk, c.out, c.inq, c.noInq = nil, false, nil, false, false
	if c.check == nil {
		c.check, c.write = c.ready, c.writeOut
	}
	return nil
}

// wait blocks until src has bytes, and returns how many; 0 means EOF.
func (c *copier) wait() (int, error) {
	if len(c.data) > 0 {
		return len(c.data), nil
	}
	for {
		c.err, c.queued, c.passed = nil, 0, false
		if err := c.raw.Read(c.check); err != nil {
			return 0, err
		}
		switch {
		case c.err != nil:
			return 0, c.err
		case c.data != nil:
			return len(c.data), nil
		case !c.passed:
			return c.queued, nil
		}
	}
}

// ready is called by RawConn.Read: it reports true once src had bytes,
// EOF or an error, and false to wait for readability. Inside copy it
// passes what it read on itself, and reports true only when the bytes
// did not all go, or the copy must splice.
func (c *copier) ready(fd uintptr) bool {
	for {
		if c.bulk {
			n, err := queued(fd)
			switch {
			case errors.Is(err, syscall.EAGAIN):
				return false
			case err != nil:
				c.err = err
				return true
			case n == 0 || n >= spliceMin:
				c.queued = n // EOF, or a backlog to splice
				return true
			}
			c.bulk = false // a small message: read it
		}
		if c.buf == nil {
			c.buf = bufs.Get().(*[bufSize]byte)
		}
		n, left, err := recv(fd, c.buf[:], c.inq)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			c.release()
			return false
		case err != nil:
			c.release()
			c.err = err
			return true
		case n == 0:
			c.release() // EOF
			return true
		}
		c.data = c.buf[:n]
		c.bulk = n == bufSize && canSplice
		if c.out == nil || c.bulk || !c.pass() {
			return true
		}
		switch {
		case c.inq && left == 0:
			// Nothing queued, no FIN: wait in this call, whose poller
			// was armed before the read, so any later byte wakes it.
			return false
		case !c.inq && !c.noInq:
			// A message after the first (copy starts after it): this
			// direction carries more, and knowing when nothing is left
			// saves a read on each. A connection of one exchange never
			// pays the setsockopt.
			c.inq = setInq(fd) == nil
			c.noInq = !c.inq
		}
		// Something may be queued: read in a new call, which a close of
		// either connection stops (a loop here would keep src's Close
		// waiting for as long as a client kept sending).
		c.passed = true
		return true
	}
}

// pass writes what ready read to copy's destination, without waiting for
// room, and tells whether all of it went. What did not go, copy's send
// writes, waiting as long as it must; after an error, wait returns it.
func (c *copier) pass() bool {
	n := len(c.data)
	if err := c.out.Write(c.write); err != nil {
		c.err = err // the destination is closed
	}
	c.sent.Add(float64(n - len(c.data)))
	if c.err != nil {
		c.data = nil
	}
	c.release()
	return c.err == nil && c.buf == nil
}

// writeOut is called by RawConn.Write: one write of c.data, which may
// take only part of it (or none: EAGAIN).
func (c *copier) writeOut(fd uintptr) bool {
	for {
		n, err := syscall.Write(int(fd), c.data)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
		case err != nil:
			c.err = err
		default:
			c.data = c.data[n:]
		}
		return true
	}
}

// release gives the buffer back once it holds nothing to take.
func (c *copier) release() {
	if len(c.data) == 0 && c.buf != nil {
		bufs.Put(c.buf)
		c.buf, c.data = nil, nil
	}
}

// read takes up to len(b) of the bytes wait reported into b.
func (c *copier) read(b []byte) (int, error) {
	if c.data != nil {
		n := copy(b, c.data)
		c.data = c.data[n:]
		c.release()
		return n, nil
	}
	n, err := c.src.Read(b)
	if err == io.EOF {
		err = nil
	}
	return n, err
}

// send moves the n bytes wait reported from src to dst.
func (c *copier) send(dst *net.TCPConn, n int) (int64, error) {
	var m int64
	var err error
	if c.data != nil {
		var w int
		w, err = dst.Write(c.data[:n])
		c.data = c.data[w:]
		c.release()
		m = int64(w)
	} else {
		m, err = c.splice(dst, n)
	}
	c.sent.Add(float64(m))
	return m, err
}

// copy copies src to dst until EOF or an error, like io.Copy.
func (c *copier) copy(dst *net.TCPConn) error {
	out, err := dst.SyscallConn()
	if err != nil {
		return err
	}
	c.out = out
	for err == nil {
		var n int
		if n, err = c.wait(); err == nil && n == 0 {
			break // EOF
		}
		if err == nil {
			_, err = c.send(dst, n)
		}
	}
	c.out = nil
	return err
}
