//go:build !linux

package main

import "net"

// listenTCP opens a data port; accepted connections get Go's default TCP
// keep-alive (see listen_linux.go).
func listenTCP(network, addr string) (*net.TCPListener, error) {
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
}
