package main

import (
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// tcpClose is Linux's TCP_CLOSE state: the socket is gone (reset).
const tcpClose = 7

// synAcked is what the handshake adds to tcpi_bytes_acked on a connection
// the proxy dialed: the acknowledgment of its SYN counts as one byte.
const synAcked = 1

// closedUnread reports whether the server behind c, which sent FIN before
// any answer, provably never read a byte past the first header bytes the
// proxy wrote: its kernel acknowledged none of them, and then reset the
// connection. A socket that a process has closed answers data with a
// reset and never queues it, while one that only half-closed would still
// acknowledge and queue it (and its process could read it). Go's net/http
// does the first when it shuts down: a connection it accepts as it stops
// is closed unread, with FIN when the request had not arrived yet.
func closedUnread(c *net.TCPConn, header int, deadline time.Time) bool {
	raw, err := c.SyscallConn()
	if err != nil {
		return false
	}
	for {
		var info *unix.TCPInfo
		var ierr error
		if err := raw.Control(func(fd uintptr) {
			info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		}); err != nil || ierr != nil {
			return false
		}
		switch {
		case info.Bytes_acked > uint64(header)+synAcked:
			return false // a client byte reached the server's socket
		case info.State == tcpClose:
			return true
		case time.Now().After(deadline):
			return false
		}
		time.Sleep(unreadPoll) // bounded by deadline
	}
}
