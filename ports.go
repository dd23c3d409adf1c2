package main

import (
	"fmt"
	"strings"

	"github.com/docker/go-connections/nat"
)

// portMap sends connections that arrive on a host port to a container port.
type portMap struct {
	host      uint16
	container uint16
}

func (p portMap) String() string {
	if p.host == p.container {
		return fmt.Sprint(p.host)
	}
	return fmt.Sprintf("%d=%d", p.host, p.container)
}

// parsePorts reads a -ports value: a comma-delimited list whose items are a
// single port P (host P to container P) or H=C (host H to container C).
// Each host port may appear once, since it gets one listener.
func parsePorts(spec string) ([]portMap, error) {
	var maps []portMap
	seen := make(map[uint16]bool)
	for _, item := range strings.Split(spec, ",") {
		if item == "" {
			return nil, fmt.Errorf("empty item in %q: want items like 80 or 443=3000, comma-delimited", spec)
		}
		host, ctr, mapped := strings.Cut(item, "=")
		h, err := parsePort(host)
		c := h
		if err == nil && mapped {
			c, err = parsePort(ctr)
		}
		if err != nil {
			if mapped {
				err = fmt.Errorf("item %q: %w", item, err)
			}
			return nil, err
		}
		if seen[h] {
			return nil, fmt.Errorf("host port %d is listed twice in %q: each host port gets one listener", h, spec)
		}
		seen[h] = true
		maps = append(maps, portMap{host: h, container: c})
	}
	return maps, nil
}

// parsePort reads one TCP port number, 1 to 65535.
func parsePort(s string) (uint16, error) {
	n, err := nat.ParsePort(s)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("port %q: want a number from 1 to 65535", s)
	}
	return uint16(n), nil
}

// portsFlag lets -ports be parsed and checked by the flag package, so a bad
// value is reported like any other bad flag.
type portsFlag struct{ maps *[]portMap }

func (f portsFlag) String() string {
	if f.maps == nil {
		return ""
	}
	items := make([]string, len(*f.maps))
	for i, m := range *f.maps {
		items[i] = m.String()
	}
	return strings.Join(items, ",")
}

func (f portsFlag) Set(s string) error {
	maps, err := parsePorts(s)
	if err != nil {
		return err
	}
	*f.maps = maps
	return nil
}
