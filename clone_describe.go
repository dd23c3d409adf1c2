package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
)

// describe writes what deploy would create (-dry-run), one setting a
// line: what the copy sets, and what the new image supplies (marked
// "image"), then what was not copied and why. The text is for people;
// nothing parses it.
func (s nextSpec) describe(w io.Writer) error {
	var b strings.Builder
	item := func(key, value string) { fmt.Fprintf(&b, "%-13s%s\n", key+":", value) }
	list := func(key string, values []string) {
		if len(values) == 0 {
			item(key, "none")
		}
		for i, v := range values {
			if i == 0 {
				item(key, v)
			} else {
				fmt.Fprintf(&b, "%-13s%s\n", "", v)
			}
		}
	}
	var img container.Config
	if s.image.Config != nil {
		img = imageConfig(s.image)
	}
	c, h := s.Config, s.Host

	item("name", s.Name)
	item("image", fmt.Sprintf("%s (%s)", c.Image, shortID(strings.TrimPrefix(s.image.ID, "sha256:"))))
	item("entrypoint", orImage(quoteArgs(c.Entrypoint), quoteArgs(img.Entrypoint)))
	cmdImg := quoteArgs(img.Cmd)
	if len(c.Entrypoint) > 0 {
		cmdImg = "" // the daemon takes no cmd from the image with an entrypoint set
	}
	item("cmd", orImage(quoteArgs(c.Cmd), cmdImg))
	item("user", orImage(c.User, img.User))
	item("workdir", orImage(c.WorkingDir, img.WorkingDir))
	list("env", describeEnv(c.Env, img.Env))
	list("labels", describeLabels(c.Labels, img.Labels))
	list("mounts", describeMounts(c, h, img))
	list("networks", describeNetworks(s))
	item("restart", describeRestart(h.RestartPolicy))
	list("resources", describeResources(h.Resources))
	item("healthcheck", describeHealth(c.Healthcheck, img.Healthcheck))
	if h.Privileged || len(h.CapAdd) > 0 || len(h.CapDrop) > 0 || len(h.SecurityOpt) > 0 {
		item("security", fmt.Sprintf("privileged %t, cap-add %v, cap-drop %v, security-opt %v", h.Privileged, h.CapAdd, h.CapDrop, h.SecurityOpt))
	}
	if len(s.Skipped) > 0 {
		b.WriteString("not copied:\n")
		for _, l := range s.Skipped {
			fmt.Fprintf(&b, "  - %s\n", l)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// orImage is the copy's own value, else the image's, marked.
func orImage(own, img string) string {
	switch {
	case own != "":
		return own
	case img != "":
		return img + "  (image)"
	}
	return "(none)"
}

// quoteArgs shows a command as its quoted arguments; nil (unset) is "",
// and an empty, set one (--entrypoint "") "[]".
func quoteArgs(args []string) string {
	if args == nil {
		return ""
	}
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = strconv.Quote(a)
	}
	return "[" + strings.Join(q, " ") + "]"
}

// describeEnv is the env the container gets: its own entries, then the
// image's defaults for the keys it does not set.
func describeEnv(env, imgEnv []string) []string {
	out := slices.Clone(env)
	for _, kv := range imgEnv {
		k, _, _ := strings.Cut(kv, "=")
		if !slices.ContainsFunc(env, func(e string) bool { return e == k || strings.HasPrefix(e, k+"=") }) {
			out = append(out, kv+"  (image)")
		}
	}
	return out
}

func describeLabels(labels, imgLabels map[string]string) []string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		out = append(out, k+"="+labels[k])
	}
	for _, k := range slices.Sorted(maps.Keys(imgLabels)) {
		if _, ok := labels[k]; !ok {
			out = append(out, k+"="+imgLabels[k]+"  (image)")
		}
	}
	return out
}

func describeMounts(c *container.Config, h *container.HostConfig, img container.Config) []string {
	var out []string
	for _, b := range h.Binds {
		parts := strings.SplitN(b, ":", 3)
		if len(parts) < 2 {
			out = append(out, "bind "+b)
			continue
		}
		kind := "volume"
		if strings.HasPrefix(parts[0], "/") {
			kind = "bind"
		}
		line := fmt.Sprintf("%s %s -> %s", kind, parts[0], parts[1])
		if len(parts) == 3 {
			line += " (" + parts[2] + ")"
		}
		out = append(out, line)
	}
	for _, m := range h.Mounts {
		src := m.Source
		switch {
		case src == "" && m.Type == "volume":
			src = "(new anonymous) "
		case src != "":
			src += " "
		}
		line := fmt.Sprintf("%s %s-> %s", m.Type, src, m.Target)
		if m.ReadOnly {
			line += " (read-only)"
		}
		out = append(out, line)
	}
	for _, p := range slices.Sorted(maps.Keys(h.Tmpfs)) {
		line := "tmpfs -> " + p
		if o := h.Tmpfs[p]; o != "" {
			line += " (" + o + ")"
		}
		out = append(out, line)
	}
	for _, p := range slices.Sorted(maps.Keys(c.Volumes)) {
		out = append(out, "volume (new anonymous) -> "+p)
	}
	for _, p := range slices.Sorted(maps.Keys(img.Volumes)) {
		if _, ok := c.Volumes[p]; !ok {
			out = append(out, "volume (new anonymous) -> "+p+"  (image)")
		}
	}
	for _, v := range h.VolumesFrom {
		out = append(out, "volumes from "+v)
	}
	return out
}

func describeNetworks(s nextSpec) []string {
	mode := s.Host.NetworkMode
	if len(s.Networks) == 0 {
		return []string{"mode " + string(mode)}
	}
	var out []string
	for _, name := range slices.Sorted(maps.Keys(s.Networks)) {
		line := name
		if aliases := s.Networks[name].Aliases; len(aliases) > 0 {
			line += " (aliases " + strings.Join(aliases, ", ") + ")"
		}
		if name == string(mode) {
			line += " (created on it)"
		}
		out = append(out, line)
	}
	return out
}

func describeRestart(p container.RestartPolicy) string {
	switch {
	case p.Name == "":
		return "no"
	case p.IsOnFailure() && p.MaximumRetryCount > 0:
		return fmt.Sprintf("%s:%d", p.Name, p.MaximumRetryCount)
	}
	return string(p.Name)
}

// describeResources lists the limits that are set.
func describeResources(r container.Resources) []string {
	var out []string
	add := func(name string, set bool, value string) {
		if set {
			out = append(out, name+" "+value)
		}
	}
	add("memory", r.Memory > 0, byteSize(r.Memory))
	add("memory-reservation", r.MemoryReservation > 0, byteSize(r.MemoryReservation))
	add("memory-swap", r.MemorySwap != 0, byteSize(r.MemorySwap))
	add("cpus", r.NanoCPUs > 0, strconv.FormatFloat(float64(r.NanoCPUs)/1e9, 'f', -1, 64))
	add("cpu-shares", r.CPUShares > 0, strconv.FormatInt(r.CPUShares, 10))
	add("cpu-quota", r.CPUQuota > 0, fmt.Sprintf("%d per %dµs", r.CPUQuota, r.CPUPeriod))
	add("cpuset-cpus", r.CpusetCpus != "", r.CpusetCpus)
	if r.PidsLimit != nil {
		add("pids-limit", *r.PidsLimit > 0, strconv.FormatInt(*r.PidsLimit, 10))
	}
	for _, u := range r.Ulimits {
		out = append(out, fmt.Sprintf("ulimit %s=%d:%d", u.Name, u.Soft, u.Hard))
	}
	for _, d := range r.Devices {
		out = append(out, "device "+d.PathOnHost+" -> "+d.PathInContainer)
	}
	return out
}

// byteSize is n bytes in the largest binary unit that divides it, as
// docker run's -m takes it; -1 is unlimited.
func byteSize(n int64) string {
	if n < 0 {
		return "unlimited"
	}
	for _, u := range []struct {
		suffix string
		size   int64
	}{{"g", 1 << 30}, {"m", 1 << 20}, {"k", 1 << 10}} {
		if n%u.size == 0 {
			return strconv.FormatInt(n/u.size, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10) + "b"
}

// describeHealth is the healthcheck the container gets: its own fields,
// the image's for the rest, as the daemon merges them.
func describeHealth(own, img *container.HealthConfig) string {
	if own == nil && img == nil {
		return "(none)"
	}
	var h container.HealthConfig
	if img != nil {
		h = *img
	}
	from := "  (image)"
	if own != nil {
		from = ""
		if len(own.Test) > 0 {
			h.Test = own.Test
		}
		pick := func(dst *time.Duration, v time.Duration) {
			if v != 0 {
				*dst = v
			}
		}
		pick(&h.Interval, own.Interval)
		pick(&h.Timeout, own.Timeout)
		pick(&h.StartPeriod, own.StartPeriod)
		pick(&h.StartInterval, own.StartInterval)
		if own.Retries != 0 {
			h.Retries = own.Retries
		}
	}
	if len(h.Test) > 0 && h.Test[0] == "NONE" {
		return "disabled" + from
	}
	return fmt.Sprintf("%s interval %v timeout %v start-period %v retries %d%s",
		quoteArgs(h.Test), h.Interval, h.Timeout, h.StartPeriod, h.Retries, from)
}
