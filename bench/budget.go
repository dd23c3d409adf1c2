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
	if phases["swap"] {
		d += time.Duration(p.swaps) * (p.swapReady + 800*time.Millisecond)
	}
	return d
}

// fit shrinks p so that its estimate fits in left, and says so.
func (p params) fit(n int, phases map[string]bool, left time.Duration) params {
	need := p.estimate(n, phases)
	if need <= left {
		return p
	}
	f := float64(left) / float64(need)
	scale := func(d time.Duration) time.Duration { return time.Duration(float64(d) * f) }
	q := p
	q.bulkWarm, q.bulkDur = scale(p.bulkWarm), scale(p.bulkDur)
	q.rateDur, q.latDur, q.idleSettle = scale(p.rateDur), scale(p.latDur), scale(p.idleSettle)
	q.idleConns = max(200, int(float64(p.idleConns)*f))
	q.swaps = max(3, int(float64(p.swaps)*f))
	fmt.Printf("   the measurements would take about %.0fs, %.0fs are left before the deadline: every one is shortened to %.0f%%\n",
		need.Seconds(), left.Seconds(), f*100)
	return q
}
