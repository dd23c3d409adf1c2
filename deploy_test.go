package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
)

// The deploy rule's tests run it with its runner in synctest bubbles: time
// is fake, so grace periods and status timeouts are checked to the
// nanosecond, and synctest.Wait lets the runner and the goroutines it
// starts settle before each assertion.

// ctrEpoch is when the test containers were created, n seconds apart.
var ctrEpoch = time.Date(1999, 12, 31, 0, 0, 0, 0, time.UTC)

// deployCtr is container n: the larger n, the newer. Its id is "ctrN" and
// its address 10.0.0.N.
func deployCtr(n int) ctrInfo {
	created := ctrEpoch.Add(time.Duration(n) * time.Second)
	return ctrInfo{
		id:      fmt.Sprintf("ctr%d", n),
		created: created,
		started: created.Add(time.Second),
		ip:      netip.AddrFrom4([4]byte{10, 0, 0, byte(n)}),
	}
}

var errStillStarting = errors.New("still starting")

// scriptedReadiness makes each container address ready at a time the test
// sets, or never, and counts the probes.
type scriptedReadiness struct {
	mu     sync.Mutex
	at     map[netip.Addr]time.Time // absent: never ready
	probes map[netip.Addr]int
}

func newScriptedReadiness() *scriptedReadiness {
	return &scriptedReadiness{
		at:     make(map[netip.Addr]time.Time),
		probes: make(map[netip.Addr]int),
	}
}

func (r *scriptedReadiness) set(ip netip.Addr, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.at[ip] = at
}

// probeCount reports how many probes ip has had.
func (r *scriptedReadiness) probeCount(ip netip.Addr) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.probes[ip]
}

func (r *scriptedReadiness) probe(ctx context.Context, ip netip.Addr) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.probes[ip]++
	if at, ok := r.at[ip]; ok && !time.Now().Before(at) {
		return nil
	}
	return errStillStarting
}

// retirement is one retire call: which container, how long after the
// bubble started.
type retirement struct {
	id string
	at time.Duration
}

// recordingRetirer records retire calls instead of talking to Docker.
type recordingRetirer struct {
	start time.Time
	mu    sync.Mutex
	got   []retirement
}

func (r *recordingRetirer) retire(ctx context.Context, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, retirement{id, time.Since(r.start)})
	return nil
}

func (r *recordingRetirer) String() string { return "recorded" }

// list returns the retirements in time order (then by id, since the
// retire goroutines of one instant run in any order).
func (r *recordingRetirer) list() []retirement {
	r.mu.Lock()
	defer r.mu.Unlock()
	got := slices.Clone(r.got)
	slices.SortFunc(got, func(a, b retirement) int {
		return cmp.Or(cmp.Compare(a.at, b.at), cmp.Compare(a.id, b.id))
	})
	return got
}

// deployHarness runs the rule and its runner in the current synctest
// bubble.
type deployHarness struct {
	t       *testing.T
	start   time.Time
	route   *router
	ready   *scriptedReadiness
	retired *recordingRetirer
	logs    *logBuffer
	events  chan any
	rn      *runner
	cancel  context.CancelFunc
	done    chan struct{}
}

// newDeployHarness starts a runner with a 10s status timeout and a 5s
// grace period, changed by configure if not nil. It must be called inside
// a bubble; the runner stops when the test ends.
func newDeployHarness(t *testing.T, configure func(*ruleConfig)) *deployHarness {
	h := &deployHarness{
		t:      t,
		start:  time.Now(),
		route:  newRouter(),
		ready:  newScriptedReadiness(),
		logs:   &logBuffer{},
		events: make(chan any),
		done:   make(chan struct{}),
	}
	h.retired = &recordingRetirer{start: h.start}
	cfg := ruleConfig{statusTimeout: 10 * time.Second, grace: 5 * time.Second}
	if configure != nil {
		configure(&cfg)
	}
	ports := []portMap{{80, 80}}
	log := slog.New(slog.NewJSONHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	rn := newRunner(newRule(cfg, log, newMetrics(ports)), h.route, ports, h.ready, h.retired, log)
	h.rn = rn
	ctx, cancel := context.WithCancel(t.Context())
	h.cancel = cancel
	go func() {
		defer close(h.done)
		rn.run(ctx, h.events)
	}()
	t.Cleanup(func() {
		cancel()
		<-h.done
		if t.Failed() {
			t.Logf("log:\n%s", h.logs.String())
		}
	})
	return h
}

// checks counts the readiness checks started for c.
func (h *deployHarness) checks(c ctrInfo) int {
	return len(h.logs.lines("checking readiness", "container", c.short()))
}

// readyAt makes c ready at offset after the bubble started.
func (h *deployHarness) readyAt(c ctrInfo, after time.Duration) {
	h.ready.set(c.ip, h.start.Add(after))
}

// send hands one event to the runner and lets it settle.
func (h *deployHarness) send(ev any) {
	h.events <- ev
	synctest.Wait()
}

func (h *deployHarness) initial(list ...ctrInfo) {
	h.send(evList{ctrs: list, initial: true})
}

func (h *deployHarness) startedCtr(c ctrInfo) { h.send(evStart{ctr: c}) }

func (h *deployHarness) stoppedCtr(c ctrInfo) { h.send(evStop{id: c.id}) }

// sleepUntil advances the fake clock to offset after the bubble started and
// lets everything due by then happen.
func (h *deployHarness) sleepUntil(offset time.Duration) {
	h.t.Helper()
	d := time.Until(h.start.Add(offset))
	if d < 0 {
		h.t.Fatalf("sleepUntil(%v): already at %v", offset, time.Since(h.start))
	}
	time.Sleep(d)
	synctest.Wait()
}

// serving returns the id of the container new connections go to, or "".
func (h *deployHarness) serving() string {
	if b := h.route.load(); b != nil {
		return b.id
	}
	return ""
}

func (h *deployHarness) wantServing(id string) {
	h.t.Helper()
	if got := h.serving(); got != id {
		h.t.Errorf("at %v: got serving %q; want %q", time.Since(h.start), got, id)
	}
}

func (h *deployHarness) wantRetired(want ...retirement) {
	h.t.Helper()
	if got := h.retired.list(); !slices.Equal(got, want) {
		h.t.Errorf("at %v: got retired %v; want %v", time.Since(h.start), got, want)
	}
}

// deployTestPair is a pair with no real sockets that a backend can track
// and close (closeAll calls Close on both ends; a zero TCPConn allows it).
func deployTestPair() *pair {
	return &pair{client: &net.TCPConn{}, server: &net.TCPConn{}}
}

// TestDeployStartup checks the start-up rule: the newest ready container
// serves, older ones are retired at once, and newer ones still starting are
// checked rather than removed.
func TestDeployStartup(t *testing.T) {
	const never = time.Duration(-1)
	tests := []struct {
		name     string
		readyAt  map[int]time.Duration // by container number; absent: at once
		list     []int
		serving  string
		retired  []retirement // at start-up
		afterAll []retirement // an hour later
	}{
		{
			name:    "all ready",
			list:    []int{2, 3, 1},
			serving: "ctr3",
			retired: []retirement{{"ctr1", 0}, {"ctr2", 0}},
		},
		{
			name:    "newest never ready",
			readyAt: map[int]time.Duration{3: never},
			list:    []int{1, 2, 3},
			serving: "ctr2",
			retired: []retirement{{"ctr1", 0}},
		},
		{
			name:    "none ready",
			readyAt: map[int]time.Duration{1: never, 2: never},
			list:    []int{1, 2},
			serving: "",
		},
		{
			name:    "none running",
			serving: "",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := newDeployHarness(t, nil)
				var list []ctrInfo
				for _, n := range tt.list {
					c := deployCtr(n)
					if at, ok := tt.readyAt[n]; !ok {
						h.readyAt(c, 0)
					} else if at != never {
						h.readyAt(c, at)
					}
					list = append(list, c)
				}
				h.initial(list...)
				h.wantServing(tt.serving)
				h.wantRetired(tt.retired...)
				h.sleepUntil(time.Hour)
				h.wantServing(tt.serving)
				h.wantRetired(tt.retired...)
			})
		})
	}
}

// TestDeployStartupNewestStillStarting checks a proxy that starts during a
// deploy: the older, ready container serves at once, and the newer one
// takes over when ready, the older being retired a grace period later.
func TestDeployStartupNewestStillStarting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newDeployHarness(t, func(d *ruleConfig) { d.grace = 5 * time.Second })
		older, newest := deployCtr(1), deployCtr(2)
		h.readyAt(older, 0)
		h.readyAt(newest, 2*time.Second)
		h.initial(newest, older)
		h.wantServing("ctr1")
		h.wantRetired()

		h.sleepUntil(2*time.Second - 1)
		h.wantServing("ctr1")
		h.sleepUntil(2 * time.Second)
		h.wantServing("ctr2")
		h.sleepUntil(7*time.Second - 1)
		h.wantRetired()
		h.sleepUntil(7 * time.Second)
		h.wantRetired(retirement{"ctr1", 7 * time.Second})
		h.sleepUntil(time.Hour)
		h.wantServing("ctr2")
		h.wantRetired(retirement{"ctr1", 7 * time.Second})
	})
}

// TestDeploySwap checks an ordinary deploy: the old container serves until
// the new one is ready, keeps its connections for the grace period, and
// then has them closed and is retired.
func TestDeploySwap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const grace = 5 * time.Second
		h := newDeployHarness(t, func(d *ruleConfig) { d.grace = grace })
		a, b := deployCtr(1), deployCtr(2)
		h.readyAt(a, 0)
		h.readyAt(b, time.Second)
		h.initial(a)
		h.wantServing("ctr1")
		old := h.route.load()
		if !old.track(deployTestPair()) {
			t.Fatal("the serving backend refused a connection")
		}

		h.startedCtr(b)
		h.sleepUntil(time.Second - 1)
		h.wantServing("ctr1")
		h.sleepUntil(time.Second)
		h.wantServing("ctr2")

		h.sleepUntil(time.Second + grace - 1)
		h.wantRetired()
		// Within its grace period the old backend keeps what it carries,
		// and takes nothing new: a connection that loaded it just before
		// the swap dials the new one.
		if n := old.count(); n != 1 {
			t.Errorf("the old backend carries %d connections within its grace period; want 1", n)
		}
		if old.track(deployTestPair()) {
			t.Error("the old backend took a new connection after the swap; want it sealed")
		}
		h.sleepUntil(time.Second + grace)
		h.wantRetired(retirement{"ctr1", time.Second + grace})
		if old.track(deployTestPair()) {
			t.Error("the old backend took a connection after its retirement; want it closed")
		}
		h.sleepUntil(time.Hour)
		h.wantServing("ctr2")
		h.wantRetired(retirement{"ctr1", time.Second + grace})
	})
}

// TestDeployStatusTimeout checks that a container that never gets ready is
// ignored: left alone, with the old one serving and never retired, and
// still checked, slowly. A later ready container does not clear it away
// either: a container that never became ready is never retired (a one-off
// container of the image, a migration, must not be removed mid-run).
func TestDeployStatusTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newDeployHarness(t, func(d *ruleConfig) {
			d.statusTimeout = 3 * time.Second
			d.grace = 5 * time.Second
		})
		a, b, c := deployCtr(1), deployCtr(2), deployCtr(3)
		h.readyAt(a, 0)
		h.initial(a)
		served := h.route.load()
		h.startedCtr(b)
		h.sleepUntil(3 * time.Second)
		fast := h.ready.probeCount(b.ip)
		if fast < 10 {
			t.Errorf("got %d probes of ctr2 within its status timeout; want one every %v", fast, probeFast)
		}
		h.sleepUntil(time.Hour)
		if h.route.load() != served {
			t.Errorf("got serving %q; want the same backend of ctr1", h.serving())
		}
		h.wantRetired()
		slow := h.ready.probeCount(b.ip) - fast
		if want := int(time.Hour / probeSlow); slow < want-1 || slow > want+1 {
			t.Errorf("got %d probes of the ignored ctr2 in an hour; want about %d (one every %v)", slow, want, probeSlow)
		}

		h.readyAt(c, time.Hour+time.Second)
		h.startedCtr(c)
		h.sleepUntil(time.Hour + time.Second)
		h.wantServing("ctr3")
		h.sleepUntil(2 * time.Hour)
		h.wantRetired(retirement{"ctr1", time.Hour + 6*time.Second})
	})
}

// TestDeployIgnoredServesOnceReady checks that an ignored container is
// still checked and serves once it is the newest ready one (it only
// stalled past its status timeout).
func TestDeployIgnoredServesOnceReady(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newDeployHarness(t, func(d *ruleConfig) { d.statusTimeout = 3 * time.Second })
		a, b := deployCtr(1), deployCtr(2)
		h.readyAt(a, 0)
		h.readyAt(b, 20*time.Second)
		h.initial(a)
		h.startedCtr(b)
		h.sleepUntil(4 * time.Second)
		if len(h.logs.lines("ignored: not ready in time", "container", b.short())) != 1 {
			t.Fatal("ctr2 not ignored at its status timeout")
		}
		h.sleepUntil(20*time.Second + probeSlow)
		h.wantServing("ctr2")
		h.sleepUntil(time.Hour)
		h.wantRetired(retirement{"ctr1", 23*time.Second + 5*time.Second})
	})
}

// TestDeployOlderStartsLater checks that a container older than the serving
// one is checked when it starts, and retired once ready, never served.
func TestDeployOlderStartsLater(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newDeployHarness(t, nil)
		older, serving := deployCtr(1), deployCtr(2)
		h.readyAt(older, 0)
		h.readyAt(serving, 0)
		h.initial(serving)
		b := h.route.load()
		h.sleepUntil(time.Second)
		h.startedCtr(older)
		h.wantRetired(retirement{"ctr1", time.Second})
		h.sleepUntil(time.Hour)
		if h.route.load() != b {
			t.Errorf("got serving %q; want the same backend of ctr2", h.serving())
		}
		h.wantRetired(retirement{"ctr1", time.Second})
	})
}

// TestDeployOlderNeverReady checks that an older container that never
// becomes ready is left alone.
func TestDeployOlderNeverReady(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newDeployHarness(t, nil)
		older, serving := deployCtr(1), deployCtr(2)
		h.readyAt(serving, 0)
		h.initial(serving)
		h.startedCtr(older)
		h.sleepUntil(time.Hour)
		h.wantServing("ctr2")
		h.wantRetired()
	})
}

// TestDeployServingStops checks that when the only serving container stops,
// new connections have no backend (and the old ones are closed) until the
// next container is ready.
func TestDeployServingStops(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newDeployHarness(t, nil)
		a, c := deployCtr(1), deployCtr(3)
		h.readyAt(a, 0)
		h.readyAt(c, 0)
		h.initial(a)
		old := h.route.load()
		h.sleepUntil(time.Second)
		h.stoppedCtr(a)
		h.wantServing("")
		if old.track(deployTestPair()) {
			t.Error("the stopped backend took a connection; want it closed")
		}
		h.sleepUntil(2 * time.Second)
		h.startedCtr(c)
		h.wantServing("ctr3")
		h.sleepUntil(time.Hour)
		h.wantServing("ctr3")
		h.wantRetired()
	})
}

// TestDeployRollback checks that when the new container stops during the
// old one's grace period, the old one serves again and is not retired, and
// that an old container that stopped too is not rolled back to.
func TestDeployRollback(t *testing.T) {
	const grace = 10 * time.Second
	t.Run("old still runs", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := newDeployHarness(t, func(d *ruleConfig) { d.grace = grace })
			a, b, c := deployCtr(1), deployCtr(2), deployCtr(3)
			h.readyAt(a, 0)
			h.readyAt(b, 0)
			h.initial(a)
			old := h.route.load()
			h.startedCtr(b)
			h.wantServing("ctr2")

			h.sleepUntil(2 * time.Second)
			h.stoppedCtr(b)
			if h.route.load() != old {
				t.Errorf("got serving %q; want the backend of ctr1 back", h.serving())
			}
			h.sleepUntil(time.Hour)
			h.wantServing("ctr1")
			h.wantRetired()
			if !old.track(deployTestPair()) {
				t.Error("the rolled-back backend refused a connection")
			}

			// Its retirement works again at the next deploy.
			h.readyAt(c, time.Hour)
			h.startedCtr(c)
			h.wantServing("ctr3")
			h.sleepUntil(2 * time.Hour)
			h.wantRetired(retirement{"ctr1", time.Hour + grace})
		})
	})
	t.Run("old stopped too", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := newDeployHarness(t, func(d *ruleConfig) { d.grace = grace })
			a, b := deployCtr(1), deployCtr(2)
			h.readyAt(a, 0)
			h.readyAt(b, 0)
			h.initial(a)
			h.startedCtr(b)
			h.sleepUntil(time.Second)
			h.stoppedCtr(a)
			h.sleepUntil(2 * time.Second)
			h.stoppedCtr(b)
			h.wantServing("")
			h.sleepUntil(time.Hour)
			h.wantServing("")
			h.wantRetired(retirement{"ctr1", grace}) // removed at the end of its grace, as planned
		})
	})
}

// TestDeployDrain checks -drain: the old container is retired as soon as
// it carries no connection, and at the latest when its grace period ends.
func TestDeployDrain(t *testing.T) {
	const (
		grace = 10 * time.Second
		swap  = time.Second
		none  = time.Duration(-1)
	)
	tests := []struct {
		name    string
		conn    bool          // the old backend carries a connection at the swap
		closeAt time.Duration // when it closes; none: never
		want    time.Duration
	}{
		{"no connection", false, none, swap},
		{"connection closes", true, 3 * time.Second, 3 * time.Second},
		{"connection outlives grace", true, none, swap + grace},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := newDeployHarness(t, func(d *ruleConfig) { d.grace, d.drain = grace, true })
				a, b := deployCtr(1), deployCtr(2)
				h.readyAt(a, 0)
				h.readyAt(b, swap)
				h.initial(a)
				old := h.route.load()
				p := deployTestPair()
				if tt.conn && !old.track(p) {
					t.Fatal("the serving backend refused a connection")
				}
				h.startedCtr(b)
				h.sleepUntil(swap)
				h.wantServing("ctr2")
				if tt.closeAt != none {
					h.sleepUntil(tt.closeAt)
					old.untrack(p)
					synctest.Wait()
				}
				h.sleepUntil(time.Hour)
				h.wantRetired(retirement{"ctr1", tt.want})
			})
		})
	}
}

// TestDeployResync checks a list sent after the event stream was
// reconnected: a container it did not know is checked, and a serving or
// checking one missing from it is taken as stopped.
func TestDeployResync(t *testing.T) {
	const grace = 5 * time.Second
	t.Run("new one listed, serving one missing", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := newDeployHarness(t, func(d *ruleConfig) { d.grace = grace })
			a, b := deployCtr(1), deployCtr(2)
			h.readyAt(a, 0)
			h.readyAt(b, time.Second)
			h.initial(a)
			old := h.route.load()
			h.send(evList{ctrs: []ctrInfo{b}})
			h.wantServing("")
			if old.track(deployTestPair()) {
				t.Error("the backend of the missing container took a connection; want it closed")
			}
			if n := h.checks(b); n != 1 {
				t.Errorf("got %d checks of the new container; want 1", n)
			}
			h.sleepUntil(time.Second)
			h.wantServing("ctr2")
			h.sleepUntil(time.Hour)
			h.wantRetired() // ctr1 stopped on its own: nothing to retire
		})
	})
	t.Run("new one and serving one listed", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := newDeployHarness(t, func(d *ruleConfig) { d.grace = grace })
			a, b := deployCtr(1), deployCtr(2)
			h.readyAt(a, 0)
			h.readyAt(b, time.Second)
			h.initial(a)
			served := h.route.load()
			h.send(evList{ctrs: []ctrInfo{a, b}})
			if h.route.load() != served {
				t.Errorf("got serving %q; want the same backend of ctr1", h.serving())
			}
			h.sleepUntil(time.Second)
			h.wantServing("ctr2")
			h.sleepUntil(time.Hour)
			h.wantRetired(retirement{"ctr1", time.Second + grace})
		})
	})
	t.Run("checking one missing", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := newDeployHarness(t, func(d *ruleConfig) { d.grace = grace })
			a, b := deployCtr(1), deployCtr(2)
			h.readyAt(a, 0)
			h.readyAt(b, 5*time.Second)
			h.initial(a)
			h.startedCtr(b)
			h.sleepUntil(time.Second)
			h.send(evList{ctrs: []ctrInfo{a}})
			h.sleepUntil(time.Hour)
			h.wantServing("ctr1")
			h.wantRetired()
		})
	})
}

// TestDeployResyncMissingRetiring checks that a retiring container missing
// from a resync list is no longer rolled back to, like one whose stop was
// seen.
func TestDeployResyncMissingRetiring(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newDeployHarness(t, func(d *ruleConfig) { d.grace = 10 * time.Second })
		a, b := deployCtr(1), deployCtr(2)
		h.readyAt(a, 0)
		h.readyAt(b, 0)
		h.initial(a)
		h.startedCtr(b) // ctr1 retiring
		h.sleepUntil(time.Second)
		h.send(evList{ctrs: []ctrInfo{b}}) // ctr1 died unseen
		h.sleepUntil(2 * time.Second)
		h.stoppedCtr(b)
		h.wantServing("") // got "ctr1": a container that no longer runs
	})
}

// TestDeployRepeatedStart checks that a start seen twice (an event and then
// a list, or a replayed event) changes nothing, while a real restart, with
// a new start time, is checked again.
func TestDeployRepeatedStart(t *testing.T) {
	tests := []struct {
		name     string
		ctr      int  // which container's start is seen again
		restart  bool // with a new start time
		checksB  int
		sameBack bool // ctr1's backend still serves right after
	}{
		{"serving, same start", 1, false, 1, true},
		{"checking, same start", 2, false, 1, true},
		{"checking, restarted", 2, true, 2, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const grace = 5 * time.Second
				h := newDeployHarness(t, func(d *ruleConfig) { d.grace = grace })
				a, b := deployCtr(1), deployCtr(2)
				h.readyAt(a, 0)
				h.readyAt(b, 2*time.Second)
				h.initial(a)
				served := h.route.load()
				h.startedCtr(b)
				checksA := h.checks(a)

				h.sleepUntil(time.Second)
				again := deployCtr(tt.ctr)
				if tt.restart {
					again.started = again.started.Add(time.Hour)
				}
				h.startedCtr(again)
				if got := h.route.load() == served; got != tt.sameBack {
					t.Errorf("got same backend %v (serving %q); want %v", got, h.serving(), tt.sameBack)
				}
				if n := h.checks(a); n != checksA {
					t.Errorf("got %d checks of ctr1; want %d", n, checksA)
				}
				if n := h.checks(b); n != tt.checksB {
					t.Errorf("got %d checks of ctr2; want %d", n, tt.checksB)
				}
				h.sleepUntil(2 * time.Second)
				h.wantServing("ctr2")
				h.sleepUntil(time.Hour)
				h.wantRetired(retirement{"ctr1", 2*time.Second + grace})
			})
		})
	}
}

// TestDeployStopsWithContext checks that run returns when its context ends
// and that nothing is retired afterwards: a proxy that stops removes
// nothing, even a container whose grace period was running.
func TestDeployStopsWithContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newDeployHarness(t, func(d *ruleConfig) { d.grace = 10 * time.Second })
		a, b, c := deployCtr(1), deployCtr(2), deployCtr(3)
		h.readyAt(a, 0)
		h.readyAt(b, 0)
		h.initial(a)
		h.startedCtr(b) // ctr1 retiring
		h.startedCtr(c) // ctr3 checking, never ready
		h.sleepUntil(2 * time.Second)
		h.cancel()
		select {
		case <-h.done:
		case <-time.After(time.Second):
			t.Fatal("run still running a second after its context ended")
		}
		h.sleepUntil(time.Hour)
		h.wantRetired()
		h.wantServing("ctr2")
	})
}

// TestNewer checks the order that picks the serving container: the later
// creation wins, the id breaks a tie, and the order is strict.
func TestNewer(t *testing.T) {
	t0 := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		a, b ctrInfo
		want bool
	}{
		{"created later", ctrInfo{id: "a", created: t0.Add(time.Second)}, ctrInfo{id: "b", created: t0}, true},
		{"created earlier", ctrInfo{id: "b", created: t0}, ctrInfo{id: "a", created: t0.Add(time.Second)}, false},
		{"a nanosecond later", ctrInfo{id: "a", created: t0.Add(1)}, ctrInfo{id: "b", created: t0}, true},
		{"tie, larger id", ctrInfo{id: "b", created: t0}, ctrInfo{id: "a", created: t0}, true},
		{"tie, smaller id", ctrInfo{id: "a", created: t0}, ctrInfo{id: "b", created: t0}, false},
		{"same", ctrInfo{id: "a", created: t0}, ctrInfo{id: "a", created: t0}, false},
		{"same instant, other zone", ctrInfo{id: "b", created: t0.In(time.FixedZone("x", 3600))}, ctrInfo{id: "a", created: t0}, true},
		{"start time does not count", ctrInfo{id: "a", created: t0, started: t0.Add(time.Hour)}, ctrInfo{id: "b", created: t0, started: t0}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := newer(tt.a, tt.b); got != tt.want {
				t.Errorf("got %v; want %v", got, tt.want)
			}
			if tt.want && newer(tt.b, tt.a) {
				t.Error("got newer both ways; want a strict order")
			}
		})
	}
}

// TestContainerIP checks which address the proxy dials: the default
// bridge's if the container has one, else the first network's by name, so
// that the choice is stable across inspects.
func TestContainerIP(t *testing.T) {
	ep := func(ip string) *network.EndpointSettings { return &network.EndpointSettings{IPAddress: ip} }
	tests := []struct {
		name     string
		ns       *container.NetworkSettings
		want     string
		network  string
		wantFail bool
		use      string // -network
		warn     bool
	}{
		{
			name: "bridge preferred",
			ns: &container.NetworkSettings{Networks: map[string]*network.EndpointSettings{
				"alpha": ep("10.1.0.2"), "bridge": ep("172.17.0.2"), "zeta": ep("10.2.0.2"),
			}},
			want: "172.17.0.2", network: "bridge",
		},
		{
			name: "first by name",
			ns: &container.NetworkSettings{Networks: map[string]*network.EndpointSettings{
				"zeta": ep("10.2.0.2"), "mid": ep("10.3.0.2"), "alpha": ep("10.1.0.2"),
			}},
			want: "10.1.0.2", network: "alpha", warn: true,
		},
		{
			name: "the only network",
			ns: &container.NetworkSettings{Networks: map[string]*network.EndpointSettings{
				"app_default": ep("10.5.0.2"),
			}},
			want: "10.5.0.2", network: "app_default",
		},
		{
			name: "-network chosen",
			use:  "zeta",
			ns: &container.NetworkSettings{Networks: map[string]*network.EndpointSettings{
				"bridge": ep("172.17.0.2"), "zeta": ep("10.2.0.2"),
			}},
			want: "10.2.0.2", network: "zeta",
		},
		{
			name: "-network absent",
			use:  "other",
			ns: &container.NetworkSettings{Networks: map[string]*network.EndpointSettings{
				"bridge": ep("172.17.0.2"),
			}},
			wantFail: true,
		},
		{
			name: "bridge without address",
			ns: &container.NetworkSettings{Networks: map[string]*network.EndpointSettings{
				"bridge": ep(""), "zeta": ep("10.2.0.2"), "nil": nil,
			}},
			want: "10.2.0.2", network: "zeta",
		},
		{
			name: "no address",
			ns: &container.NetworkSettings{Networks: map[string]*network.EndpointSettings{
				"bridge": ep(""), "none": nil,
			}},
			wantFail: true,
		},
		{name: "no networks", ns: &container.NetworkSettings{}, wantFail: true},
		{name: "nil settings", ns: nil, wantFail: true},
		{
			name: "bad address",
			ns: &container.NetworkSettings{Networks: map[string]*network.EndpointSettings{
				"bridge": ep("not-an-ip"),
			}},
			wantFail: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ip, name, warn, err := containerIP(tt.ns, tt.use)
			if tt.wantFail {
				if err == nil {
					t.Errorf("got %v on %q; want an error", ip, name)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ip.String() != tt.want || name != tt.network {
				t.Errorf("got %v on %q; want %v on %q", ip, name, tt.want, tt.network)
			}
			if (warn != "") != tt.warn {
				t.Errorf("got warning %q; want one: %v", warn, tt.warn)
			}
		})
	}
}

// TestTagMatcher checks that image references are compared after
// normalisation, and that other tags, other names and image ids do not
// match.
func TestTagMatcher(t *testing.T) {
	const id = "sha256:4bcdffd70da292293d059d2435c7056711fab2655f8b74f48ad0abe042b63687"
	tests := []struct {
		tag   string
		image string
		want  bool
	}{
		{"myapp", "myapp", true},
		{"myapp", "myapp:latest", true},
		{"myapp", "docker.io/library/myapp:latest", true},
		{"myapp", "library/myapp", true},
		{"myapp:latest", "myapp", true},
		{"myapp", "myapp:v2", false},
		{"myapp", "other", false},
		{"myapp", "other/myapp", false},
		{"myapp", id, false},
		{"myapp", "myapp@" + id, false},
		{"myapp", "", false},
		{"myapp", "MyApp", false},
		{"myapp:v2", "myapp:v2", true},
		{"myapp:v2", "myapp", false},
		{"registry.local:5000/team/app:1.2", "registry.local:5000/team/app:1.2", true},
		{"registry.local:5000/team/app:1.2", "registry.local:5000/team/app", false},
		{"registry.local:5000/team/app:1.2", "registry.local/team/app:1.2", false},
		{"registry.local:5000/team/app:1.2", "team/app:1.2", false},
		{"registry.local:5000/team/app", "registry.local:5000/team/app:latest", true},
	}
	for _, tt := range tests {
		t.Run(tt.tag+" "+tt.image, func(t *testing.T) {
			m, err := newTagMatcher(tt.tag)
			if err != nil {
				t.Fatal(err)
			}
			if got := m.match(tt.image); got != tt.want {
				t.Errorf("got %v; want %v", got, tt.want)
			}
		})
	}
	for _, bad := range []string{"", "MyApp", "my app", "myapp:"} {
		if _, err := newTagMatcher(bad); err == nil {
			t.Errorf("newTagMatcher(%q): got no error; want one", bad)
		}
	}
}

// TestDeployProbeSchedule (outage 6) checks that probes are only as
// frequent as the rule needs: fast until ready; then none while nothing
// could take over; during a grace period, while a rollback is possible,
// one after probeWatch, the gaps doubling up to probeWatchMax; none after
// it. (Before, a new container was probed
// every 200ms for its whole grace period: with MariaDB's defaults, 100
// such handshake-less connections block the proxy's address.)
func TestDeployProbeSchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const grace = 10 * time.Second
		h := newDeployHarness(t, func(d *ruleConfig) { d.grace = grace })
		a, b := deployCtr(1), deployCtr(2)
		h.readyAt(a, time.Second)
		h.initial(a)
		h.sleepUntil(time.Second)
		h.wantServing("ctr1")
		if n := h.ready.probeCount(a.ip); n != int(time.Second/probeFast)+1 {
			t.Errorf("got %d probes of ctr1 until ready at 1s; want one every %v", n, probeFast)
		}
		before := h.ready.probeCount(a.ip)
		h.sleepUntil(time.Minute)
		if n := h.ready.probeCount(a.ip) - before; n != 0 {
			t.Errorf("got %d probes of the only serving container; want none", n)
		}

		h.readyAt(b, time.Minute)
		h.startedCtr(b)
		h.wantServing("ctr2")
		h.sleepUntil(time.Minute + grace)
		h.wantRetired(retirement{"ctr1", time.Minute + grace})
		during := h.ready.probeCount(b.ip)
		// 1s, then doubling: at 1, 3, 7 s of a 10s grace (one either way
		// where a probe meets the end of the grace period).
		if during < 2 || during > 4 {
			t.Errorf("got %d probes of ctr2 in the 10s grace period of ctr1; want 3 (1 s, doubling)", during)
		}
		h.sleepUntil(time.Hour)
		if n := h.ready.probeCount(b.ip) - during; n != 0 {
			t.Errorf("got %d probes of ctr2 once no rollback was possible; want none", n)
		}
	})
}

// TestDeployStatusTimeoutFromStart (outage 12) checks that -status_timeout
// counts from the container's start when the daemon tells how long it has
// run (a proxy restarted during a deploy), within the timeout.
func TestDeployStatusTimeoutFromStart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newDeployHarness(t, nil) // 10s status timeout
		c := deployCtr(1)
		c.age = 8 * time.Second
		h.initial(c)
		h.sleepUntil(2*time.Second - 1)
		if len(h.logs.lines("ignored: not ready in time")) != 0 {
			t.Fatal("ignored before its status timeout, counted from its start")
		}
		h.sleepUntil(2 * time.Second)
		if len(h.logs.lines("ignored: not ready in time")) != 1 {
			t.Fatal("not ignored 10s after its start")
		}
	})
}

// TestUpFor checks how the daemon's "Up ..." status is read.
func TestUpFor(t *testing.T) {
	for status, want := range map[string]time.Duration{
		"Up 8 seconds":                8 * time.Second,
		"Up 1 second":                 time.Second,
		"Up Less than a second":       0,
		"Up About a minute (healthy)": time.Minute,
		"Up 3 minutes (Paused)":       3 * time.Minute,
		"Up 2 hours":                  2 * time.Hour,
		"Exited (0) 3 seconds ago":    0,
		"Up 4 days":                   0,
		"":                            0,
	} {
		if got := upFor(status); got != want {
			t.Errorf("upFor(%q) = %v; want %v", status, got, want)
		}
	}
}

// TestDeployProbeScheduleLongGrace (outage 6): an hour of grace costs the
// serving container a few dozen probes, not one a second: MariaDB blocks
// the proxy's address after 100 connections that close without a
// handshake (see mariadb_docker_test.go).
func TestDeployProbeScheduleLongGrace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const grace = time.Hour
		h := newDeployHarness(t, func(d *ruleConfig) { d.grace = grace })
		a, b := deployCtr(1), deployCtr(2)
		h.readyAt(a, 0)
		h.initial(a)
		h.sleepUntil(time.Second)
		h.wantServing("ctr1")
		h.readyAt(b, time.Second)
		h.startedCtr(b)
		h.sleepUntil(2 * time.Second)
		h.wantServing("ctr2")
		before := h.ready.probeCount(b.ip)
		h.sleepUntil(2*time.Second + grace)
		if n := h.ready.probeCount(b.ip) - before; n > 70 {
			t.Errorf("got %d probes of the serving container in an hour of grace; want at most 70 (MariaDB blocks at 100)", n)
		}
		if n := h.ready.probeCount(a.ip); n > 75 {
			t.Errorf("got %d probes of the retiring container; want at most 75", n)
		}
	})
}
