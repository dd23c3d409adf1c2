package main

import (
	"io"
	"net"
	"sync"
	"syscall"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// copier moves the bytes of one direction of a pair. io.Copy between two
// *net.TCPConn splices (the bytes never enter user space), but while it
// waits for data it holds a pipe: two file descriptors and up to 1 MiB of
// kernel buffer per direction, for the whole life of an idle connection.
// So a copier waits for readability first, holding nothing, then splices
// exactly the bytes the kernel has queued (io.Copy still splices for an
// *io.LimitedReader around a *net.TCPConn), and the pipe goes back to the
// pool at once.
//
// After wait reports n bytes, the caller takes them with send (to another
// connection) or read (into a buffer). Every loop over wait makes progress:
// splice stops at a TCP urgent mark as if at the end of the stream, so when
// it moves nothing, one plain read steps over the mark, which delivers the
// bytes around the urgent byte as a read always does.
type copier struct {
	src   *net.TCPConn
	raw   syscall.RawConn
	check func(fd uintptr) bool // c.queued, bound once so waiting allocates nothing
	lr    io.LimitedReader
	n     int   // bytes queued, set by queued
	err   error // set by queued
	peek  [1]byte
	sent  prometheus.Counter // bytes copied
}

// from makes src the connection c reads.
func (c *copier) from(src *net.TCPConn) error {
	raw, err := src.SyscallConn()
	if err != nil {
		return err
	}
	c.src, c.raw = src, raw
	if c.check == nil {
		c.check = c.queued
	}
	return nil
}

// wait blocks until src has bytes queued, and returns how many; 0 means
// EOF.
func (c *copier) wait() (int, error) {
	if err := c.raw.Read(c.check); err != nil {
		return 0, err
	}
	return c.n, c.err
}

// read takes up to len(b) of the queued bytes into b.
func (c *copier) read(b []byte) (int, error) {
	n, err := c.src.Read(b)
	if err == io.EOF {
		err = nil
	}
	return n, err
}

// send moves the n queued bytes from src to dst, splicing them.
func (c *copier) send(dst *net.TCPConn, n int) (int64, error) {
	c.lr.R, c.lr.N = c.src, int64(n)
	m, err := io.Copy(dst, &c.lr)
	if m == 0 && err == nil {
		m, err = c.stepOver(dst) // an urgent mark: see copier
	}
	c.sent.Add(float64(m))
	return m, err
}

// stepOver copies what one plain read of src returns to dst.
func (c *copier) stepOver(dst *net.TCPConn) (int64, error) {
	buf := stepBufs.Get().(*[stepBufSize]byte)
	defer stepBufs.Put(buf)
	n, err := c.read(buf[:])
	if err != nil || n == 0 {
		return 0, err
	}
	m, err := dst.Write(buf[:n])
	return int64(m), err
}

const stepBufSize = 4 << 10

var stepBufs = sync.Pool{New: func() any { return new([stepBufSize]byte) }}

// queued is called by RawConn.Read: it reports true once src has data or
// EOF (c.n bytes queued; 0 for EOF) or an error, and false to wait. One
// recv with MSG_PEEK|MSG_TRUNC tells all three without copying or
// consuming a byte: it returns how many bytes are queued, 0 at EOF, or
// EAGAIN. (unix.Recvfrom would allocate a socket address on every call,
// and wants a buffer as long as the length asked.)
func (c *copier) queued(fd uintptr) bool {
	n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&c.peek[0])), peekMax,
		unix.MSG_PEEK|unix.MSG_TRUNC|unix.MSG_DONTWAIT, 0, 0)
	switch errno {
	case 0:
		c.n, c.err = int(n), nil
	case unix.EAGAIN:
		return false
	case unix.EINTR:
		return c.queued(fd)
	default:
		c.n, c.err = 0, errno
	}
	return true
}

// peekMax is the most one wait reports: the kernel stops counting at the
// first socket buffer at or past it.
const peekMax = 1 << 30
