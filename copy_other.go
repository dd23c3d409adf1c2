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

// recv reads from fd into b; left is -1: no system but Linux tells what
// stays queued.
func recv(fd uintptr, b []byte, _ bool) (n, left int, err error) {
	n, err = syscall.Read(int(fd), b)
	return n, -1, err
}

func setInq(fd uintptr) error { return syscall.ENOTSUP }
