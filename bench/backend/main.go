// Backend is the service the benchmark runs in a container (FROM scratch).
// Each port has one job, so every measurement exercises the proxy and not
// the service:
//
//	-source ADDR   bulk source: writes zeros to every connection until it breaks
//	-sink ADDR     bulk sink: reads and discards everything
//	-echo ADDR     request/response: echoes fixed-size messages; after a
//	               message whose first byte is 'q' it closes, so that the
//	               server closes first and TIME_WAIT stays in the container
//	               rather than on the host's ephemeral ports
//	-http ADDR     / answers the hostname (the container's short id),
//	               /status answers 200 from -ready_after on, /ready_at the
//	               readiness moment and the first 200 answer (unix ns)
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

func main() {
	var (
		source     = flag.String("source", ":9001", "bulk source listen address")
		sink       = flag.String("sink", ":9002", "bulk sink listen address")
		echo       = flag.String("echo", ":9003", "request/response listen address")
		httpAddr   = flag.String("http", ":8080", "HTTP listen address")
		msgSize    = flag.Int("msg", 64, "request/response message size in bytes")
		readyAfter = flag.Duration("ready_after", 0, "/status answers 503 until this long after start")
	)
	flag.Parse()
	readyAt := time.Now().Add(*readyAfter)

	serve(*source, func(c net.Conn) {
		buf := make([]byte, 1<<20)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
	serve(*sink, func(c net.Conn) {
		buf := make([]byte, 1<<20)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	})
	serve(*echo, func(c net.Conn) {
		buf := make([]byte, *msgSize)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil || buf[0] == 'q' {
				return
			}
		}
	})
	go serveHTTP(*httpAddr, readyAt)

	// As PID 1 a signal without a handler is ignored: handle SIGTERM so
	// that docker stop ends the backend at once.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	<-sig
}

// serve accepts on addr and runs handle for each connection, closing it
// afterwards.
func serve(addr string, handle func(net.Conn)) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				log.Fatal(err)
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

func serveHTTP(addr string, readyAt time.Time) {
	host, _ := os.Hostname()
	var (
		mu      sync.Mutex
		firstOK time.Time // the first /status that answered 200
	)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, host)
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		if now.Before(readyAt) {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		mu.Lock()
		if firstOK.IsZero() {
			firstOK = now
		}
		mu.Unlock()
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/ready_at", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		var first int64
		if !firstOK.IsZero() {
			first = firstOK.UnixNano()
		}
		mu.Unlock()
		fmt.Fprintf(w, "%d %d\n", readyAt.UnixNano(), first)
	})
	log.Fatal(http.ListenAndServe(addr, mux))
}
