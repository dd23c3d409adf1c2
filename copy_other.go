//go:build !linux

package main

import (
	"errors"
	"net"
	"syscall"
)

// canSplice: without splice(2) every byte goes through the pooled buffer.
const canSplice = false

func queued(fd uintptr) (int, error) { return 0, syscall.ENOTSUP }

func (c *copier) splice(dst *net.TCPConn, n int) (int64, error) {
	return 0, errors.New("no splice on this system")
}
