package main

import (
	"io"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// canSplice: Linux moves a backlog from socket to socket with splice(2).
// io.Copy between two *net.TCPConn splices, and still does for an
// *io.LimitedReader around the source, so a splice never takes more than
// the bytes queued, and the pipe it borrows goes back to Go's pool at once.
const canSplice = true

// queued tells how many bytes src's socket has queued, without copying or
// consuming one: a recv with MSG_PEEK|MSG_TRUNC returns the count, 0 at
// EOF, or EAGAIN. (unix.Recvfrom would allocate a socket address on every
// call, and wants a buffer as long as the length asked.)
func queued(fd uintptr) (int, error) {
	var b [1]byte
	for {
		n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), peekMax,
			unix.MSG_PEEK|unix.MSG_TRUNC|unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		}
		return 0, errno
	}
}

// peekMax is the most one peek reports: the kernel stops counting at the
// first socket buffer at or past it.
const peekMax = 1 << 30

// splice moves n queued bytes from src to dst. splice stops at a TCP
// urgent mark as if at the end of the stream; when it moves nothing, one
// plain read steps over the mark, which delivers the bytes around the
// urgent byte as a read always does.
func (c *copier) splice(dst *net.TCPConn, n int) (int64, error) {
	lr := io.LimitedReader{R: c.src, N: int64(n)}
	m, err := io.Copy(dst, &lr)
	if m == 0 && err == nil {
		c.bulk = false // the next wait reads, past the mark
	}
	return m, err
}
