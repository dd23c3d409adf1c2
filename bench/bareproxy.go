package main

import (
	"io"
	"log"
	"net"
	"strings"
	"sync"
)

// runBare is the bare Go proxy: the floor of what a Go proxy costs. For
// each LISTEN=TARGET pair it accepts, dials and runs io.Copy both ways
// between the two *net.TCPConn (splice on Linux), passing EOF on with
// CloseWrite. Nothing else: no tracking, no limits, no logging.
func runBare(spec string) {
	for pair := range strings.SplitSeq(spec, ",") {
		listen, target, _ := strings.Cut(pair, "=")
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					log.Fatal(err)
				}
				go bareForward(c.(*net.TCPConn), target)
			}
		}()
	}
	select {} // until killed
}

func bareForward(client *net.TCPConn, target string) {
	defer client.Close()
	s, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	server := s.(*net.TCPConn)
	defer server.Close()
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = io.Copy(server, client); _ = server.CloseWrite() })
	_, _ = io.Copy(client, server)
	_ = client.CloseWrite()
	wg.Wait()
}
