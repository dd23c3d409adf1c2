package main

import "net"

// copy copies the copier's source to dst until EOF or an error, like
// io.Copy: every round moves what wait reports (see copier).
func (c *copier) copy(dst *net.TCPConn) (int64, error) {
	var written int64
	for {
		n, err := c.wait()
		if err != nil || n == 0 {
			return written, err
		}
		m, err := c.send(dst, n)
		written += m
		if err != nil {
			return written, err
		}
	}
}
