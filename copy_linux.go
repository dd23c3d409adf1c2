//go:build linux

package main

import (
	"io"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// copier copies one direction of a pair. io.Copy between two *net.TCPConn
// splices (the bytes never enter user space), but while it waits for data
// it holds a pipe: two file descriptors and up to 1 MiB of kernel buffer
// per direction, for the whole life of an idle connection. So copier waits
// for readability first, holding nothing, then splices exactly the bytes
// the kernel has queued (io.Copy still splices for an *io.LimitedReader
// around a *net.TCPConn), and the pipe goes back to the pool at once.
type copier struct {
	src   *net.TCPConn
	raw   syscall.RawConn
	check func(fd uintptr) bool // c.queued, bound once so waiting allocates nothing
	lr    io.LimitedReader
	n     int   // bytes queued, set by queued
	err   error // set by queued
	peek  [1]byte
}

func (c *copier) init(src *net.TCPConn) error {
	raw, err := src.SyscallConn()
	if err != nil {
		return err
	}
	c.src, c.raw, c.check = src, raw, c.queued
	return nil
}

// copy copies src to dst until EOF or an error, like io.Copy. A copier
// serves one src for its whole life.
func (c *copier) copy(dst, src *net.TCPConn) (int64, error) {
	if c.raw == nil {
		if err := c.init(src); err != nil {
			return 0, err
		}
	}
	var written int64
	for {
		if err := c.raw.Read(c.check); err != nil {
			return written, err
		}
		if c.err != nil || c.n == 0 {
			return written, c.err // n == 0: EOF
		}
		c.lr.R, c.lr.N = c.src, int64(c.n)
		n, err := io.Copy(dst, &c.lr)
		written += n
		if err != nil {
			return written, err
		}
	}
}

// queued is called by RawConn.Read: it reports true once src has data or
// EOF (c.n bytes queued; 0 for EOF) or an error, and false to wait.
func (c *copier) queued(fd uintptr) bool {
	c.n, c.err = unix.IoctlGetInt(int(fd), unix.SIOCINQ) // FIONREAD
	if c.err != nil || c.n > 0 {
		return true
	}
	// Nothing queued: either nothing has arrived yet, or the peer sent
	// FIN. A peek tells which without consuming anything.
	// (unix.Recvfrom would allocate a socket address on every call.)
	n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&c.peek[0])), 1,
		unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
	switch errno {
	case 0:
		c.n = int(n) // 0: EOF; 1: data arrived since the ioctl
	case unix.EAGAIN:
		return false
	case unix.EINTR:
		return c.queued(fd)
	default:
		c.err = errno
	}
	return true
}
