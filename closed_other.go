//go:build !linux

package main

import (
	"net"
	"time"
)

// closedUnread cannot tell, without Linux's TCP_INFO, whether a server
// that sent FIN read the client's bytes: it says no, and nothing is
// resent (see closed_linux.go).
func closedUnread(c *net.TCPConn, header int, deadline time.Time) bool { return false }
