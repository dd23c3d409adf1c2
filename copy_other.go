//go:build !linux

package main

import (
	"io"
	"net"

	"github.com/prometheus/client_golang/prometheus"
)

// copier moves the bytes of one direction of a pair, on systems without
// splice: plain reads and writes through a buffer of its own, with the
// same contract as the Linux copier (wait reports bytes, send or read
// takes them).
type copier struct {
	src  *net.TCPConn
	buf  []byte // read by wait, not yet taken
	mem  []byte
	sent prometheus.Counter
}

func (c *copier) from(src *net.TCPConn) error {
	c.src, c.buf = src, nil
	return nil
}

// wait blocks until src has bytes, and returns how many; 0 means EOF.
func (c *copier) wait() (int, error) {
	if len(c.buf) > 0 {
		return len(c.buf), nil
	}
	if c.mem == nil {
		c.mem = make([]byte, 32<<10)
	}
	n, err := c.src.Read(c.mem)
	c.buf = c.mem[:n]
	switch {
	case n > 0:
		return n, nil
	case err == io.EOF:
		return 0, nil
	}
	return 0, err
}

// read takes up to len(b) of the bytes wait reported into b.
func (c *copier) read(b []byte) (int, error) {
	n := copy(b, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}

// send writes the bytes wait reported to dst.
func (c *copier) send(dst *net.TCPConn, n int) (int64, error) {
	m, err := dst.Write(c.buf[:min(n, len(c.buf))])
	c.buf = c.buf[m:]
	c.sent.Add(float64(m))
	return int64(m), err
}
