package main

import (
	"context"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// listenTCP opens a data port. Clients get TCP keep-alive, to find the
// ones that vanish, as Go gives every accepted connection by default (15 s
// idle, 15 s apart, 9 probes); but Go sets it with four setsockopts per
// accept, and Linux copies a listener's keep-alive settings to each
// connection it accepts. So they are set once, on the listener, and Go is
// told to leave accepted connections alone.
func listenTCP(network, addr string) (*net.TCPListener, error) {
	lc := net.ListenConfig{KeepAlive: -1, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			for _, o := range []struct{ level, opt, v int }{
				{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
				{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, keepAliveIdle},
				{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, keepAliveIdle},
				{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepAliveProbes},
			} {
				if serr == nil {
					serr = unix.SetsockoptInt(int(fd), o.level, o.opt, o.v)
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(context.Background(), network, addr)
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
}

// Go's default keep-alive for accepted connections, in seconds and probes.
const (
	keepAliveIdle   = 15
	keepAliveProbes = 9
)
