package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"
)

// progress prints what wait and deploy wait for on stderr: one live line
// on a terminal, renewed every second, or a plain line each time what it
// waits for changes; with -json, the proxy's events go to stdout too.
type progress struct {
	w    io.Writer
	name string    // the command, for the line's prefix
	json io.Writer // -json: the events as JSON lines; nil: none
	tty  bool
	live bool   // a live line is on the terminal, not ended by a newline
	key  string // of the last plain line
}

func newProgress(w io.Writer, name string) *progress {
	return &progress{w: w, name: name, tty: isTerminal(w)}
}

// isTerminal tells whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// show prints what is waited for, and since when.
func (p *progress) show(l waitLine, start time.Time) {
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[Kdocker-proxy %s: %s [%s]", p.name, l.text, since(start))
		p.live = true
		return
	}
	if l.key != p.key {
		p.key = l.key
		fmt.Fprintf(p.w, "docker-proxy %s: %s\n", p.name, l.text)
	}
}

// note prints a line that stays.
func (p *progress) note(msg string) {
	p.end()
	fmt.Fprintf(p.w, "docker-proxy %s: %s\n", p.name, msg)
}

// event passes an event on to -json.
func (p *progress) event(e deployEvent) {
	if p.json != nil {
		_ = json.NewEncoder(p.json).Encode(e)
	}
}

// done prints the outcome of a deploy that worked.
func (p *progress) done(msg string) { p.note(msg) }

// end ends a live line, so that what follows starts on a line of its own.
func (p *progress) end() {
	if p.live {
		fmt.Fprintln(p.w)
		p.live = false
	}
}
