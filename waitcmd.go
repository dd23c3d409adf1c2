package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// docker-proxy wait CONTAINER: blocks until the container serves and the
// one it replaced is retired, and tells by its exit code whether the
// deploy worked (see the exit* codes).

func waitMain(args []string, stdout, stderr io.Writer) int {
	var cf ctlFlags
	var o waitOptions
	fs := newCommandFlags("wait", "wait [flags] CONTAINER\n\n"+
		"Waits until CONTAINER (id, short id or name) serves and the container it\n"+
		"replaced is retired (removed, stopped or left, as the proxy's -retire says).", stderr, &cf)
	o.flags(fs.DurationVar, fs.BoolVar)
	if code, exit := parseCommand(fs, args, stderr); exit {
		return code
	}
	if fs.NArg() != 1 {
		fmt.Fprintf(stderr, "docker-proxy wait: want one CONTAINER (id, short id or name), got %d arguments (see -h)\n", fs.NArg())
		return exitUsage
	}
	return withProxy("wait", cf, stderr, func(ctx context.Context, c *ctlClient) error {
		return o.wait(ctx, c, fs.Arg(0), stdout, stderr)
	})
}

// waitOptions are the flags of wait, which deploy shares.
type waitOptions struct {
	timeout time.Duration
	json    bool
}

func (o *waitOptions) flags(dur func(*time.Duration, string, time.Duration, string), boolean func(*bool, string, bool, string)) {
	dur(&o.timeout, "timeout", 0, "how long to wait at most (default: the proxy's -status_timeout plus -grace_period and -stop_timeout, plus a minute)")
	boolean(&o.json, "json", false, "print the proxy's deploy events on stdout as JSON lines")
}

// Bounds of wait's own.
const (
	waitConnect   = 30 * time.Second // a lost proxy must answer again within this
	waitSlack     = time.Minute      // added to status_timeout + grace_period
	waitRecheck   = 5 * time.Second  // how often a container the proxy has not seen yet is looked up again
	waitReconnect = 500 * time.Millisecond
)

// wait waits for the deploy of ref.
func (o waitOptions) wait(ctx context.Context, c *ctlClient, ref string, stdout, stderr io.Writer) error {
	start := time.Now()
	if o.timeout > 0 {
		// -timeout bounds everything, also a proxy that accepts and
		// never answers.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, o.timeout, errTimedOut)
		defer cancel()
	}
	stopped := func(now time.Time, w *waiter) error {
		what := "interrupted"
		if errors.Is(context.Cause(ctx), errTimedOut) {
			what = "timed out"
		}
		if w == nil {
			return failf(exitUnknown, "%s after %s", what, since(start))
		}
		return failf(exitUnknown, "%s after %s: %s", what, since(start), w.progress(now).text)
	}
	target, err := c.container(ctx, ref)
	if ctx.Err() != nil {
		return stopped(time.Now(), nil)
	}
	if err != nil {
		return err
	}
	lines, err := c.events(ctx)
	if ctx.Err() != nil {
		return stopped(time.Now(), nil)
	}
	if err != nil {
		return err
	}
	w := &waiter{target: target}
	p := newProgress(stderr, "wait")
	if o.json {
		p.json = stdout
	}
	defer p.end()
	deadline := start.Add(waitConnect) // until the first status tells the proxy's timings
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastCheck := start
	for {
		select {
		case l, ok := <-lines:
			if !ok && ctx.Err() != nil {
				lines = nil // ended by ctx: told below
				continue
			}
			if !ok {
				p.note("lost the proxy's event stream: reconnecting")
				w.reconnected()
				if lines, err = reconnect(ctx, c, earliest(deadline, time.Now().Add(waitConnect))); err != nil {
					if ctx.Err() != nil {
						return stopped(time.Now(), w)
					}
					return err
				}
				continue
			}
			if l.Event != nil {
				p.event(*l.Event)
				if err := w.event(*l.Event); err != nil {
					return err
				}
			}
			if l.Status == nil {
				continue
			}
			if w.last == nil {
				if !target.Selected {
					return failf(exitUsage, "%s is not a container this proxy serves: its image %s and labels do not match %s", target.describe(), target.Image, l.Status.Selector)
				}
				deadline = start.Add(o.timeout)
				if o.timeout == 0 {
					deadline = start.Add(l.Status.Settings.total() + waitSlack)
				}
			}
			done, err := w.status(l.Status)
			if err != nil {
				return err
			}
			if done {
				p.done(fmt.Sprintf("%s serves; the container it replaced is retired (after %s)", target.describe(), since(start)))
				return nil
			}
			p.show(w.progress(time.Now()), start)
		case now := <-tick.C:
			if now.After(deadline) {
				return failf(exitUnknown, "timed out after %s: %s", since(start), w.progress(now).text)
			}
			if !w.seen && now.Sub(lastCheck) >= waitRecheck {
				lastCheck = now
				if cur, err := c.container(ctx, target.ID); err == nil && cur.State != "running" {
					return failf(exitFailed, "%s is %s: it stopped before the proxy saw it", target.describe(), cur.State)
				}
			}
			p.show(w.progress(now), start)
		case <-ctx.Done():
			return stopped(time.Now(), w)
		}
	}
}

// errTimedOut ends a wait's context when -timeout runs out.
var errTimedOut = errors.New("-timeout ran out")

// reconnect opens the event stream again, trying until deadline. Any
// error is tried again: the socket answered as a docker-proxy before, so
// a connection dropped without an answer (EOF, a reset: "not a
// docker-proxy") is most likely a proxy that is restarting.
func reconnect(ctx context.Context, c *ctlClient, deadline time.Time) (<-chan controlLine, error) {
	for {
		lines, err := c.events(ctx)
		if err == nil {
			return lines, nil
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		select {
		case <-time.After(waitReconnect):
		case <-ctx.Done():
			return nil, failf(exitUnknown, "interrupted while reconnecting: %w", err)
		}
	}
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func since(t time.Time) time.Duration { return time.Since(t).Round(time.Second) }

// total is how long a deploy may take at most: ready within the status
// timeout, then the old container's grace period.
func (s settings) total() time.Duration {
	st, _ := time.ParseDuration(s.StatusTimeout)
	g, _ := time.ParseDuration(s.GracePeriod)
	stop, _ := time.ParseDuration(s.StopTimeout)
	return st + g + stop
}

func (c controlContainer) describe() string {
	if c.Name == "" {
		return shortID(c.ID)
	}
	return shortID(c.ID) + " (" + c.Name + ")"
}
