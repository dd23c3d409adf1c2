package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// docker-proxy status: the proxy's state, for a person or (-json) a
// machine. It reads the control socket only, so it needs no Docker access.

// statusWait bounds status: the proxy answers from memory.
const statusWait = 10 * time.Second

func statusMain(args []string, stdout, stderr io.Writer) int {
	var cf ctlFlags
	var asJSON bool
	fs := newCommandFlags("status", "status [flags]\n\nPrints what a running docker-proxy serves, checks, drains and ignores.", stderr, &cf)
	fs.BoolVar(&asJSON, "json", false, "print the status document as JSON")
	if code, exit := parseCommand(fs, args, stderr); exit {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "docker-proxy status: unexpected argument %q (see -h)\n", fs.Arg(0))
		return exitUsage
	}
	return withProxy("status", cf, stderr, func(ctx context.Context, c *ctlClient) error {
		ctx, cancel := context.WithTimeout(ctx, statusWait)
		defer cancel()
		s, err := c.status(ctx)
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			return failf(exitUnknown, "no docker-proxy answered on %s within %v", c.path, statusWait)
		case err != nil:
			return err
		case asJSON:
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(s)
		}
		printStatus(stdout, s)
		return nil
	})
}

// printStatus writes s for a person: a heading line, then one line per
// container.
func printStatus(w io.Writer, s *status) {
	fmt.Fprintf(w, "docker-proxy on %s, ports %s, selects %s; Docker events %s\n",
		s.Address, strings.Join(s.Ports, ","), s.Selector, s.Events)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	line := func(state string, c ctrStatus, what string) {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", state, c.Container, orDash(c.Name), orDash(c.Image), orDash(c.Addr), what)
	}
	if s.Serving == nil {
		fmt.Fprintln(tw, "serving\t-\tnone: new connections wait for a ready container")
	} else {
		c := *s.Serving
		line("serving", c, fmt.Sprintf("created %s ago, %s", age(s.Time, c.Created), connCount(c.Connections)))
	}
	for _, c := range s.Pending {
		what := "checking for " + age(s.Time, c.Seen)
		if c.Deadline != nil {
			what += ", ignored in " + secs(c.DeadlineIn)
		}
		if c.LastError != "" {
			what += ", last error: " + c.LastError
		}
		line("checking", c, what)
	}
	for _, c := range s.Draining {
		what := connCount(c.Connections)
		if c.Deadline != nil {
			what += ", retired in " + secs(c.DeadlineIn)
		} else {
			what += ", being retired"
		}
		line("draining", c, what)
	}
	for _, c := range s.Ignored {
		line("ignored", c, orUnknown(c.LastError))
	}
	for _, c := range s.Retired {
		line("retired", c, "left running (-retire none), "+connCount(c.Connections))
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func age(now, t time.Time) string {
	if t.IsZero() || now.IsZero() {
		return "?"
	}
	return max(now.Sub(t), 0).Round(time.Second).String()
}

func secs(s float64) string {
	return (time.Duration(s * float64(time.Second))).Round(time.Second).String()
}

func connCount(n int) string {
	if n == 1 {
		return "1 open connection"
	}
	return fmt.Sprintf("%d open connections", n)
}
