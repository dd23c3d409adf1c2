package main

// Naming and starting the copy that clone.go plans: a name derived from
// the old one and free, and a create, connect and start that leave
// nothing behind when they fail.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
)

// maxNameTries bounds the search for a free name.
const maxNameTries = 100

// nextName is the name after name: a number that ends it after a "-", "_"
// or "." goes up by one, keeping its separator and width ("web-2" to
// "web-3", "myapp_web_1" to "myapp_web_2", "job-09" to "job-10"); any
// other name gets "-2" ("web" to "web-2").
func nextName(name string) string {
	name = strings.TrimPrefix(name, "/")
	stem, n, width, ok := splitNumber(name)
	if !ok {
		return name + "-2"
	}
	return fmt.Sprintf("%s%0*d", stem, width, n+1)
}

// splitNumber splits "web-2" into "web-", 2 and its width, 1.
func splitNumber(name string) (stem string, n, width int, ok bool) {
	i := len(name)
	for i > 0 && name[i-1] >= '0' && name[i-1] <= '9' {
		i--
	}
	if i == len(name) || i < 2 || !strings.ContainsRune("-_.", rune(name[i-1])) {
		return name, 0, 0, false
	}
	n, err := strconv.Atoi(name[i:])
	if err != nil || n == int(^uint(0)>>1) {
		return name, 0, 0, false
	}
	return name[:i], n, len(name) - i, true
}

// freeName is name, or the first name after it that no container has.
func freeName(ctx context.Context, docker cloneAPI, name string) (string, error) {
	stem, _, _, _ := splitNumber(name)
	// The daemon matches a name filter as a regular expression, on names
	// with and without their "/".
	ctrs, err := docker.ContainerList(ctx, container.ListOptions{
		All:     true,
		Filters: filters.NewArgs(filters.Arg("name", "^/?"+regexp.QuoteMeta(stem))),
	})
	if err != nil {
		return "", fmt.Errorf("list containers named like %s: %w", name, err)
	}
	taken := map[string]bool{}
	for _, c := range ctrs {
		for _, n := range c.Names {
			taken[strings.TrimPrefix(n, "/")] = true
		}
	}
	for range maxNameTries {
		if !taken[name] {
			return name, nil
		}
		name = nextName(name)
	}
	return "", fmt.Errorf("no free container name up to %s (%d tried)", name, maxNameTries)
}

// setName names the copy, and gives it the compose replica number of the
// name if it has compose's (see ownLabels).
func (s *nextSpec) setName(name string) {
	s.Name = name
	if _, ok := s.Config.Labels[composeNumberLabel]; !ok {
		return
	}
	if _, n, _, ok := splitNumber(name); ok {
		s.Config.Labels = maps.Clone(s.Config.Labels)
		s.Config.Labels[composeNumberLabel] = strconv.Itoa(n)
	}
}

// start creates the container (on its first network; the others are
// connected before it starts, since API 1.41 takes one network at create),
// starts it, and returns its id; on any failure it removes what it
// created. A name taken since planNext moves on to the next one.
func (s nextSpec) start(ctx context.Context, docker cloneAPI) (string, error) {
	first := string(s.Host.NetworkMode)
	var netCfg *network.NetworkingConfig
	if ep, ok := s.Networks[first]; ok {
		netCfg = &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{first: ep}}
	}
	cfg := *s.Config
	s.Config = &cfg // setName changes the labels of this copy only
	var created container.CreateResponse
	for try := 1; ; try++ {
		var err error
		created, err = docker.ContainerCreate(ctx, s.Config, s.Host, netCfg, nil, s.Name)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			// The daemon may have created it before the answer was lost.
			return "", errors.Join(fmt.Errorf("create %s: %w", s.Name, err), s.removeUnanswered(ctx, docker))
		}
		if !cerrdefs.IsConflict(err) || try == maxNameTries {
			return "", fmt.Errorf("create %s: %w", s.Name, err)
		}
		s.setName(nextName(s.Name))
	}
	id := created.ID
	fail := func(err error) (string, error) {
		rctx, cancel := cleanupContext(ctx)
		defer cancel()
		if rerr := docker.ContainerRemove(rctx, id, container.RemoveOptions{Force: true, RemoveVolumes: true}); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove %s: %w", shortID(id), rerr))
		}
		return "", err
	}
	for _, name := range slices.Sorted(maps.Keys(s.Networks)) {
		if name == first {
			continue
		}
		if err := docker.NetworkConnect(ctx, name, id, s.Networks[name]); err != nil {
			return fail(fmt.Errorf("connect %s (%s) to %s: %w", s.Name, shortID(id), name, err))
		}
	}
	if err := docker.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		return fail(fmt.Errorf("start %s (%s): %w", s.Name, shortID(id), err))
	}
	return id, nil
}

// cleanupContext outlives ctx: a container left behind because the user
// pressed ^C would be the next deploy's surprise.
func cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
}

// removeUnanswered removes the container that a create whose context
// ended may have made: one of the copy's name and image that never
// started, as only that create can have left it.
func (s nextSpec) removeUnanswered(ctx context.Context, docker cloneAPI) error {
	rctx, cancel := cleanupContext(ctx)
	defer cancel()
	info, err := docker.ContainerInspect(rctx, s.Name)
	if cerrdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("inspect %s: %w", s.Name, err)
	}
	if info.ContainerJSONBase == nil || info.Config == nil || info.State == nil ||
		info.Config.Image != s.Config.Image || info.State.Status != container.StateCreated {
		return nil
	}
	if err := docker.ContainerRemove(rctx, info.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
		return fmt.Errorf("remove %s (%s): %w", s.Name, shortID(info.ID), err)
	}
	return nil
}
