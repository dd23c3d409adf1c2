package main

import (
	"fmt"
	"time"
)

// The whole run has a deadline, and building can take from a second to
// half a minute depending on Go's build cache. So once everything is
// running, the measurements are planned against the time left: if they
// would not fit, every duration and count shrinks by the same factor,
// rather than the last measurement being cut off.

// cleanupReserve is kept for stopping the proxies and removing the
// containers and the image after the deadline's measurements.
const cleanupReserve = 4 * time.Second

// estimate is how long the measurements take with p for n targets, from
// timings of earlier runs on this machine.
func (p params) estimate(n int, phases map[string]bool) time.Duration {
	reps := time.Duration(p.reps * n)
	var d time.Duration
	if phases["idle"] {
		d += reps * (300*time.Millisecond + p.idleSettle*3/2 + time.Duration(p.idleConns)*450*time.Microsecond)
	}
	if phases["bulk"] {
		d += reps * time.Duration(len(bulkKinds)) * (p.bulkWarm + p.bulkDur + 50*time.Millisecond)
	}
	if phases["latency"] {
		d += reps * (p.latDur + min(p.latDur/4, 100*time.Millisecond) + 50*time.Millisecond)
	}
	if phases["rate"] {
		d += reps * (p.rateDur + min(p.rateDur/4, 100*time.Millisecond) + 50*time.Millisecond)
	}
	d += p.httpCost(n, phases)
	if phases["swap"] {
		d += time.Duration(p.swaps) * (p.swapReady + 800*time.Millisecond)
	}
	if phases["restart"] {
		// Four modes: two host processes, two containers through the
		// start script (its runs cost most: docker create, start, wait).
		d += 4*time.Second + time.Duration(p.restarts)*4*time.Second
	}
	return d
}

// httpCost is the http phase's share of the estimate: wrk's whole seconds
// and its start, per target and repetition.
func (p params) httpCost(n int, phases map[string]bool) time.Duration {
	if !phases["http"] {
		return 0
	}
	return time.Duration(p.reps*n) * (time.Duration(wrkSeconds(p.httpDur))*time.Second + 150*time.Millisecond)
}

// fit shrinks p so that its estimate fits in left, and says so. wrk's
// duration does not shrink below its floor of a second, so that floor is
// set aside and the rest shrinks by the same factor.
func (p params) fit(n int, phases map[string]bool, left time.Duration) params {
	need := p.estimate(n, phases)
	if need <= left {
		return p
	}
	floor := params{reps: p.reps, httpDur: time.Second}.httpCost(n, phases)
	f := max(0.1, float64(left-floor)/float64(need-floor))
	scale := func(d time.Duration) time.Duration { return time.Duration(float64(d) * f) }
	q := p
	q.bulkWarm, q.bulkDur = scale(p.bulkWarm), scale(p.bulkDur)
	q.rateDur, q.latDur, q.idleSettle = scale(p.rateDur), scale(p.latDur), scale(p.idleSettle)
	q.httpDur = max(time.Second, scale(p.httpDur))
	q.idleConns = max(200, int(float64(p.idleConns)*f))
	q.swaps = max(3, int(float64(p.swaps)*f))
	q.restarts = max(1, int(float64(p.restarts)*f))
	fmt.Printf("   the measurements would take about %.0fs, %.0fs are left before the deadline: every one is shortened to %.0f%%\n",
		need.Seconds(), left.Seconds(), f*100)
	return q
}
