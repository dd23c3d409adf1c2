package main

import (
	"io"
	"net"
	"syscall"
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

// recv reads from fd into b. With inq (TCP_INQ on), it also returns what
// stays queued after the read, more than 0 while a FIN waits to be read;
// else, or when the kernel does not say, left is -1.
func recv(fd uintptr, b []byte, inq bool) (n, left int, err error) {
	if !inq {
		n, err = syscall.Read(int(fd), b)
		return n, -1, err
	}
	var cmsg [(unix.SizeofCmsghdr + 8) / 8]uint64 // room for one int, aligned
	iov := unix.Iovec{Base: &b[0]}
	iov.SetLen(len(b))
	msg := unix.Msghdr{Iov: &iov, Iovlen: 1, Control: (*byte)(unsafe.Pointer(&cmsg[0]))}
	msg.SetControllen(8 * len(cmsg))
	r, _, errno := unix.Syscall(unix.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&msg)), unix.MSG_DONTWAIT)
	if errno != 0 {
		return 0, -1, errno
	}
	left = -1
	h := (*unix.Cmsghdr)(unsafe.Pointer(&cmsg[0]))
	if msg.Controllen >= unix.SizeofCmsghdr+4 && h.Level == unix.SOL_TCP && h.Type == unix.TCP_CM_INQ {
		left = int(*(*int32)(unsafe.Add(unsafe.Pointer(&cmsg[0]), unix.SizeofCmsghdr)))
	}
	return int(r), left, nil
}

// setInq asks the kernel to tell, with each read of fd, how many bytes
// stay queued (see recv).
func setInq(fd uintptr) error {
	return unix.SetsockoptInt(int(fd), unix.SOL_TCP, unix.TCP_INQ, 1)
}
