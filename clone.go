package main

// The core of docker-proxy deploy: the next container of a service is a
// copy of the serving one, made from the image its tag names now.
//
// A user who deploys means "the same container, new image" (what
// watchtower does): what they set on the old container is kept, and what
// the old container merely inherited from its image comes from the new
// image instead. The daemon merges the image's config into a container's
// at create, and inspect reports the merged result, so what was inherited
// is told apart by comparing with the old image: a value equal to the old
// image's is left out of the copy, and the daemon fills in the new
// image's.

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/go-connections/nat"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// cloneAPI is the part of the Docker API deploy uses.
type cloneAPI interface {
	ContainerInspect(ctx context.Context, id string) (container.InspectResponse, error)
	ContainerList(ctx context.Context, options container.ListOptions) ([]container.Summary, error)
	ImageInspect(ctx context.Context, ref string, opts ...client.ImageInspectOption) (image.InspectResponse, error)
	ContainerCreate(ctx context.Context, config *container.Config, hostConfig *container.HostConfig, networkingConfig *network.NetworkingConfig, platform *ocispec.Platform, containerName string) (container.CreateResponse, error)
	NetworkConnect(ctx context.Context, networkID, containerID string, config *network.EndpointSettings) error
	ContainerStart(ctx context.Context, containerID string, options container.StartOptions) error
	ContainerRemove(ctx context.Context, containerID string, options container.RemoveOptions) error
}

// nextSpec is the container deploy creates.
type nextSpec struct {
	Name     string
	Config   *container.Config
	Host     *container.HostConfig
	Networks map[string]*network.EndpointSettings // by network name
	Skipped  []string                             // what was not copied, and why: one line each, printed by deploy

	// image is the new image as planned, for describe to show what it
	// supplies (env defaults, cmd, ...); the daemon merges it in at create.
	image image.InspectResponse
}

// composeNumberLabel is the replica number docker-compose gives a
// container of a service.
const composeNumberLabel = "com.docker.compose.container-number"

// planNext reads the serving container and the images and returns its
// copy from image ref, with env overrides ("KEY=VALUE").
func planNext(ctx context.Context, docker cloneAPI, servingID, ref string, env []string) (nextSpec, error) {
	overrides, err := parseEnvOverrides(env)
	if err != nil {
		return nextSpec{}, err
	}
	info, err := docker.ContainerInspect(ctx, servingID)
	if err != nil {
		return nextSpec{}, fmt.Errorf("inspect %s: %w", shortID(servingID), err)
	}
	if info.ContainerJSONBase == nil || info.Config == nil || info.HostConfig == nil || info.NetworkSettings == nil {
		return nextSpec{}, fmt.Errorf("inspect %s: the daemon's answer lacks the container's config", shortID(servingID))
	}
	// The container's Image is the id of the image it was created from,
	// whatever its tag names now. A container keeps its image from being
	// removed, so this fails only on a daemon that lost it.
	old, err := docker.ImageInspect(ctx, info.Image)
	if err != nil {
		return nextSpec{}, fmt.Errorf("inspect image %s of %s: %w", shortID(strings.TrimPrefix(info.Image, "sha256:")), shortID(info.ID), err)
	}
	nu, err := docker.ImageInspect(ctx, ref)
	if cerrdefs.IsNotFound(err) {
		return nextSpec{}, fmt.Errorf("image %s: not found locally (deploy does not pull; build or pull it first): %w", ref, err)
	}
	if err != nil {
		return nextSpec{}, fmt.Errorf("inspect image %s: %w", ref, err)
	}
	s := planFrom(info, old, nu, ref, overrides)
	name, err := freeName(ctx, docker, s.Name)
	if err != nil {
		return nextSpec{}, err
	}
	s.setName(name)
	return s, nil
}

// planFrom is planNext's decision, with no I/O: the copy of the container
// info from image ref (inspected as nu; old is the image info was made
// from). Its name is the first derived one, taken or not.
func planFrom(info container.InspectResponse, old, nu image.InspectResponse, ref string, overrides []string) nextSpec {
	s := nextSpec{image: nu}
	s.Config = copyConfig(info, imageConfig(old), ref, overrides, &s.Skipped)
	s.Host = copyHostConfig(info, &s.Skipped)
	noteAnonymousVolumes(info, s, &s.Skipped)
	s.Host.NetworkMode, s.Networks = copyNetworks(info, &s.Skipped)
	if s.Host.NetworkMode.IsContainer() {
		// The daemon refuses a hostname with another container's network
		// (it is that container's).
		s.Config.Hostname, s.Config.Domainname = "", ""
	}
	s.setName(nextName(info.Name))
	return s
}

// imageConfig is an image's config, empty if it has none.
func imageConfig(img image.InspectResponse) container.Config {
	var c container.Config
	if img.Config == nil {
		return c
	}
	ic := img.Config
	c.User, c.WorkingDir, c.StopSignal = ic.User, ic.WorkingDir, ic.StopSignal
	c.Env, c.Cmd, c.Entrypoint, c.Shell = ic.Env, ic.Cmd, ic.Entrypoint, ic.Shell
	c.Labels, c.Volumes, c.Healthcheck = ic.Labels, ic.Volumes, ic.Healthcheck
	c.ExposedPorts = make(nat.PortSet, len(ic.ExposedPorts))
	for p := range ic.ExposedPorts {
		c.ExposedPorts[nat.Port(p)] = struct{}{}
	}
	return c
}

// copyConfig is the container's config for the new image: what the user
// set, without what the old image supplied.
func copyConfig(info container.InspectResponse, img container.Config, ref string, overrides []string, skipped *[]string) *container.Config {
	c := info.Config
	cfg := &container.Config{
		Image:           ref,
		Domainname:      c.Domainname,
		Tty:             c.Tty,
		OpenStdin:       c.OpenStdin,
		StdinOnce:       c.StdinOnce,
		NetworkDisabled: c.NetworkDisabled,
		// AttachStd* stay false: deploy starts the container detached.
		Env:          applyEnv(ownEnv(c.Env, img.Env), overrides),
		Labels:       ownLabels(c.Labels, img.Labels),
		ExposedPorts: ownKeys(c.ExposedPorts, img.ExposedPorts),
		Volumes:      ownKeys(c.Volumes, img.Volumes),
		Healthcheck:  ownHealthcheck(c.Healthcheck, img.Healthcheck),
	}
	// The default hostname is the container's short id (on the host
	// network, the host's name, which is the same for the copy).
	if c.Hostname != shortID(info.ID) {
		cfg.Hostname = c.Hostname
	}
	if c.User != img.User {
		cfg.User = c.User
	}
	if c.WorkingDir != img.WorkingDir {
		cfg.WorkingDir = c.WorkingDir
	}
	if c.StopSignal != img.StopSignal {
		cfg.StopSignal = c.StopSignal
	}
	if c.StopTimeout != nil {
		cfg.StopTimeout = new(*c.StopTimeout)
	}
	if !slices.Equal(c.Shell, img.Shell) {
		cfg.Shell = c.Shell
	}
	cfg.Entrypoint, cfg.Cmd = ownCommand(c.Entrypoint, c.Cmd, img.Entrypoint, img.Cmd)
	// API 1.41 keeps a MAC address the user set here (deprecated since 1.44).
	if mac := c.MacAddress; mac != "" {
		*skipped = append(*skipped, fmt.Sprintf("mac address %s: not copied: it would clash with the running container's", mac))
	}
	return cfg
}

// ownCommand is the entrypoint and cmd to create the copy with. The daemon
// takes the image's cmd only when no entrypoint is given, so a user's
// entrypoint goes with the cmd as it is, and a user's cmd goes alone.
func ownCommand(entrypoint, cmd, imgEntrypoint, imgCmd []string) (ep, c []string) {
	// An empty cmd where the image has one: the user's --entrypoint
	// dropped it, even if that entrypoint is the image's own.
	userEntrypoint := !slices.Equal(entrypoint, imgEntrypoint) || (len(cmd) == 0 && len(imgCmd) > 0)
	if userEntrypoint && len(entrypoint) > 0 {
		return entrypoint, cmd
	}
	if userEntrypoint {
		ep = entrypoint // cleared (--entrypoint ""): keep it cleared
	}
	if !slices.Equal(cmd, imgCmd) {
		c = cmd
	}
	return ep, c
}

// ownEnv is the container's env without the entries it has from its image,
// so that the new image's defaults apply.
func ownEnv(env, imgEnv []string) []string {
	var out []string
	for _, kv := range env {
		if !slices.Contains(imgEnv, kv) {
			out = append(out, kv)
		}
	}
	return out
}

// parseEnvOverrides checks each KEY=VALUE.
func parseEnvOverrides(env []string) ([]string, error) {
	for _, kv := range env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return nil, fmt.Errorf("env %q: want KEY=VALUE", kv)
		}
	}
	return env, nil
}

// applyEnv sets each KEY=VALUE of overrides in env, in place of an entry of
// the same key.
func applyEnv(env, overrides []string) []string {
	for _, kv := range overrides {
		k, _, _ := strings.Cut(kv, "=")
		i := slices.IndexFunc(env, func(e string) bool { return e == k || strings.HasPrefix(e, k+"=") })
		if i < 0 {
			env = append(env, kv)
		} else {
			env[i] = kv
		}
	}
	return env
}

// ownLabels is the container's labels without those it has from its
// image.
//
// docker-compose's labels are kept: with them compose still counts the
// copy as a container of its service (ps, logs, down, scale), which is
// what a deploy of a compose service wants once the proxy has removed the
// old one. Compose's replica number is set to the copy's own (see
// setName): a copy of replica 1 named myapp_web_2 is replica 2, not a
// second replica 1, so compose's next number and its scale-down order
// stay right.
func ownLabels(labels, imgLabels map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range labels {
		if iv, ok := imgLabels[k]; !ok || iv != v {
			out[k] = v
		}
	}
	return out
}

// ownKeys is the set keys the container has and its image has not (the
// daemon adds the image's to the container's).
func ownKeys[K ~string](set map[K]struct{}, imgSet map[K]struct{}) map[K]struct{} {
	var out map[K]struct{}
	for k := range set {
		if _, ok := imgSet[k]; !ok {
			if out == nil {
				out = map[K]struct{}{}
			}
			out[k] = struct{}{}
		}
	}
	return out
}

// ownHealthcheck is the container's healthcheck, field by field, without
// the fields it has from its image: the daemon fills each unset field in
// from the image, so a user's --health-interval alone stays alone.
func ownHealthcheck(hc, img *container.HealthConfig) *container.HealthConfig {
	if hc == nil {
		return nil
	}
	if img == nil {
		cp := *hc
		return &cp
	}
	var h container.HealthConfig
	if !slices.Equal(hc.Test, img.Test) {
		h.Test = hc.Test
	}
	pick := func(v, iv time.Duration) time.Duration {
		if v != iv {
			return v
		}
		return 0
	}
	h.Interval, h.Timeout = pick(hc.Interval, img.Interval), pick(hc.Timeout, img.Timeout)
	h.StartPeriod, h.StartInterval = pick(hc.StartPeriod, img.StartPeriod), pick(hc.StartInterval, img.StartInterval)
	if hc.Retries != img.Retries {
		h.Retries = hc.Retries
	}
	if h.Test == nil && h.Interval == 0 && h.Timeout == 0 && h.StartPeriod == 0 && h.StartInterval == 0 && h.Retries == 0 {
		return nil
	}
	return &h
}

// copyHostConfig is the container's host config, as it is but for what
// would clash with the running container or is bound to it.
func copyHostConfig(info container.InspectResponse, skipped *[]string) *container.HostConfig {
	h := *info.HostConfig
	for _, p := range slices.Sorted(maps.Keys(h.PortBindings)) {
		for _, b := range h.PortBindings[p] {
			host := "host port " + cmp.Or(b.HostPort, "(any)")
			if b.HostIP != "" {
				host = b.HostIP + ":" + cmp.Or(b.HostPort, "(any)")
			}
			*skipped = append(*skipped, fmt.Sprintf("published port %s on %s: not copied: the proxy owns the host ports, and a published port would clash with the running container", p, host))
		}
	}
	if h.PublishAllPorts {
		*skipped = append(*skipped, "publish all ports (-P): not copied: the proxy owns the host ports")
	}
	for _, l := range h.Links {
		*skipped = append(*skipped, fmt.Sprintf("link %s: not copied: links are legacy, and bound to the old container's name", l))
	}
	h.PortBindings, h.PublishAllPorts, h.Links = nil, false, nil
	return &h
}

// noteAnonymousVolumes adds a line for each anonymous volume of the
// container (an image VOLUME, -v /path, --mount type=volume without a
// source): the copy does not get it, since two containers writing to one
// volume meant for one can break its data (a database's files); its data
// stays with the old container.
func noteAnonymousVolumes(info container.InspectResponse, s nextSpec, skipped *[]string) {
	named := map[string]bool{} // destinations that a bind or a named volume takes
	for _, b := range info.HostConfig.Binds {
		if parts := strings.Split(b, ":"); len(parts) >= 2 {
			named[parts[1]] = true
		}
	}
	anon := map[string]bool{} // destinations of an anonymous volume, by the config
	for d := range info.Config.Volumes {
		anon[d] = true
	}
	for _, m := range info.HostConfig.Mounts {
		if m.Source != "" {
			named[m.Target] = true
		} else if m.Type == "volume" {
			anon[m.Target] = true
		}
	}
	fresh := map[string]bool{} // where the copy gets a fresh volume
	for d := range s.Config.Volumes {
		fresh[d] = true
	}
	if s.image.Config != nil {
		for d := range s.image.Config.Volumes {
			fresh[d] = true
		}
	}
	for _, m := range s.Host.Mounts {
		if m.Type == "volume" && m.Source == "" {
			fresh[m.Target] = true
		}
	}
	for _, m := range info.Mounts {
		if m.Type != "volume" || named[m.Destination] || !anon[m.Destination] {
			continue
		}
		then := "there is no volume there in the new container"
		if fresh[m.Destination] {
			then = "the new container gets a fresh, empty one"
		}
		*skipped = append(*skipped, fmt.Sprintf("anonymous volume %s at %s: not copied (its data stays with the old container): %s", shortID(m.Name), m.Destination, then))
	}
}

// copyNetworks is the network mode and the endpoints of the copy, by
// network name. The mode is the network the mode named, else the first
// by name: the one the copy is created on.
func copyNetworks(info container.InspectResponse, skipped *[]string) (container.NetworkMode, map[string]*network.EndpointSettings) {
	mode := info.HostConfig.NetworkMode
	if mode.IsHost() || mode.IsNone() || mode.IsContainer() {
		return mode, nil
	}
	names := slices.Sorted(maps.Keys(info.NetworkSettings.Networks))
	if len(names) == 0 {
		*skipped = append(*skipped, fmt.Sprintf("network mode %s: not copied: the container is on no network now, so neither is the copy (mode none)", mode))
		return "none", nil
	}
	eps := make(map[string]*network.EndpointSettings, len(names))
	first := names[0]
	for _, name := range names {
		ep := info.NetworkSettings.Networks[name]
		if ep == nil {
			ep = &network.EndpointSettings{}
		}
		eps[name] = copyEndpoint(name, ep, info.ID, skipped)
		if namesNetwork(mode, name, ep.NetworkID) {
			first = name
		}
	}
	return container.NetworkMode(first), eps
}

// namesNetwork tells whether a network mode names the network of this
// name and id: "default" is the bridge, and a mode may be an id or its
// prefix.
func namesNetwork(mode container.NetworkMode, name, id string) bool {
	m := string(mode)
	switch {
	case m == name:
		return true
	case mode.IsDefault():
		return name == "bridge"
	}
	return id != "" && len(m) >= 12 && strings.HasPrefix(id, m)
}

// copyEndpoint is a container's endpoint on a network for its copy: the
// user's aliases, without the container's short id the daemon adds (the
// copy gets its own), and no fixed address, which would clash with the
// running container's.
func copyEndpoint(netName string, ep *network.EndpointSettings, id string, skipped *[]string) *network.EndpointSettings {
	out := &network.EndpointSettings{
		DriverOpts: maps.Clone(ep.DriverOpts),
		GwPriority: ep.GwPriority,
	}
	for _, a := range ep.Aliases {
		if a != shortID(id) && a != id {
			out.Aliases = append(out.Aliases, a)
		}
	}
	fixed := func(kind, addr string) {
		*skipped = append(*skipped, fmt.Sprintf("fixed %s %s on network %s: not copied: it would clash with the running container's", kind, addr, netName))
	}
	if c := ep.IPAMConfig; c != nil {
		if c.IPv4Address != "" {
			fixed("address", c.IPv4Address)
		}
		if c.IPv6Address != "" {
			fixed("address", c.IPv6Address)
		}
		for _, a := range c.LinkLocalIPs {
			fixed("link-local address", a)
		}
	}
	for _, l := range ep.Links {
		*skipped = append(*skipped, fmt.Sprintf("link %s on network %s: not copied: links are legacy, and bound to the old container's name", l, netName))
	}
	return out
}
