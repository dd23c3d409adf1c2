package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// HTTP through each proxy: wrk with keep-alive connections against the
// backend's HTTP port, which answers / with a short body (the container's
// hostname), so that the figure is the proxy's cost per small
// request/response rather than the service's.
const (
	wrkThreads = 2
	wrkConns   = 32
)

// ensureWrk reports whether wrk is on PATH, installing Debian's package
// when it is not. Without it the http phase is skipped.
func ensureWrk(ctx context.Context) bool {
	return aptEnsure(ctx, "wrk", "wrk", func() bool {
		_, err := exec.LookPath("wrk")
		return err == nil
	})
}

// wrkSeconds is the phase's duration for wrk, which takes whole seconds.
func wrkSeconds(d time.Duration) int { return max(1, int(d.Round(time.Second)/time.Second)) }

// measureHTTP runs wrk through every target that forwards the HTTP port,
// the targets alternating, and records requests per second and the p50
// and p99 of wrk's latency distribution.
func (b *bench) measureHTTP(ctx context.Context) error {
	if !b.wrkOK {
		fmt.Println("   wrk is not installed (apt-get install -y wrk): no HTTP figures")
		return nil
	}
	for rep := range b.p.reps {
		for _, t := range rotate(b.targets, rep) {
			if t.http == "" {
				continue
			}
			c0 := cpuTime(t.pid())
			r, err := runWrk(ctx, t.http, wrkSeconds(b.p.httpDur))
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			b.res.add("http-rps", t.name, r.rps)
			b.res.add("http-p50", t.name, r.p50.Seconds()*1e6)
			b.res.add("http-p99", t.name, r.p99.Seconds()*1e6)
			if t.proc != nil && r.requests > 0 {
				b.res.add("http-cpu-us", t.name, (cpuTime(t.pid())-c0).Seconds()*1e6/float64(r.requests))
			}
			if r.errors != "" {
				b.res.note(fmt.Sprintf("%s wrk: %s", t.name, r.errors))
			}
		}
	}
	return nil
}

type wrkResult struct {
	rps      float64
	requests int64
	p50, p99 time.Duration
	errors   string // wrk's socket errors and non-2xx lines, if any
}

// runWrk runs wrk -t2 -c32 -d<secs>s --latency against http://a/.
func runWrk(ctx context.Context, a string, secs int) (wrkResult, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "wrk", "-t"+strconv.Itoa(wrkThreads), "-c"+strconv.Itoa(wrkConns),
		fmt.Sprintf("-d%ds", secs), "--timeout", "2s", "--latency", "http://"+a+"/")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk: %v\n%s", err, out)
	}
	return parseWrk(string(out))
}

// parseWrk reads wrk's output: "Requests/sec:", "N requests in", the
// "Latency Distribution" percentiles (with --latency), and the error
// lines.
func parseWrk(out string) (wrkResult, error) {
	var r wrkResult
	var errs []string
	inDist := false
	for line := range strings.SplitSeq(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 0:
		case f[0] == "Requests/sec:" && len(f) == 2:
			r.rps, _ = strconv.ParseFloat(f[1], 64)
		case len(f) >= 3 && f[1] == "requests" && f[2] == "in":
			r.requests, _ = strconv.ParseInt(f[0], 10, 64)
		case strings.HasPrefix(strings.TrimSpace(line), "Latency Distribution"):
			inDist = true
			continue
		case f[0] == "Socket" || f[0] == "Non-2xx":
			errs = append(errs, strings.TrimSpace(line))
		}
		if inDist {
			if len(f) != 2 || !strings.HasSuffix(f[0], "%") {
				inDist = false
				continue
			}
			d, err := wrkDuration(f[1])
			if err != nil {
				return r, err
			}
			switch f[0] {
			case "50%", "50.000%":
				r.p50 = d
			case "99%", "99.000%":
				r.p99 = d
			}
		}
	}
	if r.rps == 0 || r.p99 == 0 {
		return r, fmt.Errorf("no Requests/sec or latency distribution in wrk's output:\n%s", out)
	}
	r.errors = strings.Join(errs, "; ")
	return r, nil
}

// wrkDuration parses wrk's durations: 250.00us, 1.20ms, 2.00s, 1.00m.
func wrkDuration(s string) (time.Duration, error) {
	units := []struct {
		suffix string
		d      time.Duration
	}{{"us", time.Microsecond}, {"ms", time.Millisecond}, {"s", time.Second}, {"m", time.Minute}}
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseFloat(num, 64)
			if err != nil {
				break
			}
			return time.Duration(v * float64(u.d)), nil
		}
	}
	return 0, errors.New("wrk: cannot read the duration " + strconv.Quote(s))
}
