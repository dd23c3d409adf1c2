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
type copier struct {
	src    *net.TCPConn
	raw    syscall.RawConn
	check  func(fd uintptr) bool // c.ready, bound once so that waiting allocates nothing
	buf    *[bufSize]byte        // from bufs while it holds bytes, else nil
	data   []byte                // what wait read that the caller has not taken
	queued int                   // bytes queued in the socket, to splice (bulk)
	bulk   bool                  // the last read filled buf: look before reading
	err    error                 // set by ready
	sent   prometheus.Counter    // bytes copied
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
	c.data, c.bulk = nil, false
	if c.check == nil {
		c.check = c.ready
	}
	return nil
}

// wait blocks until src has bytes, and returns how many; 0 means EOF.
func (c *copier) wait() (int, error) {
	if len(c.data) > 0 {
		return len(c.data), nil
	}
	c.err, c.queued = nil, 0
	if err := c.raw.Read(c.check); err != nil {
		return 0, err
	}
	switch {
	case c.err != nil:
		return 0, c.err
	case c.data != nil:
		return len(c.data), nil
	}
	return c.queued, nil
}

// ready is called by RawConn.Read: it reports true once src had bytes,
// EOF or an error, and false to wait for readability.
func (c *copier) ready(fd uintptr) bool {
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
	for {
		n, err := syscall.Read(int(fd), c.buf[:])
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			c.release()
			return false
		case err != nil:
			c.release()
			c.err = err
		case n == 0:
			c.release() // EOF
		default:
			c.data = c.buf[:n]
			c.bulk = n == bufSize && canSplice
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
func (c *copier) copy(dst *net.TCPConn) (int64, error) {
	var written int64
	for {
		n, err := c.wait()
		if err != nil || n == 0 {
			return written, err
		}
		m, err := c.send(dst, n)
		written += m
		if err != nil {
			return written, err
		}
	}
}
