package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
)

// docker-proxy deploy: starts the next container of the service, a copy
// of the serving one from the image the tag names now (see planNext), then
// waits for it as docker-proxy wait does.

func deployMain(args []string, stdout, stderr io.Writer) int {
	var cf ctlFlags
	var o waitOptions
	var ref, docker string
	var env []string
	var dryRun, keep bool
	fs := newCommandFlags("deploy", "deploy [flags]\n\n"+
		"Starts a copy of the serving container from the image the proxy's -tag names\n"+
		"now (after docker build -t that tag, the new build), then waits as wait does.", stderr, &cf)
	fs.StringVar(&ref, "image", "", "the image `reference` to deploy (default: the proxy's -tag, else the serving container's image)")
	fs.Func("env", "set environment variable `KEY=VALUE` in the new container; repeat it for several", func(s string) error {
		if k, _, ok := strings.Cut(s, "="); !ok || k == "" {
			return errors.New("want KEY=VALUE")
		}
		env = append(env, s)
		return nil
	})
	fs.BoolVar(&dryRun, "dry-run", false, "print the container deploy would create, and create none")
	fs.BoolVar(&keep, "keep", false, "keep the new container when the deploy fails (default: remove it, so that the old one is the only one again)")
	fs.StringVar(&docker, "docker", "", "`URL` of the Docker API (default: $DOCKER_HOST, else "+defaultDocker+")")
	o.flags(fs.DurationVar, fs.BoolVar)
	if code, exit := parseCommand(fs, args, stderr); exit {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "docker-proxy deploy: unexpected argument %q: the container to copy is the serving one (see -h)\n", fs.Arg(0))
		return exitUsage
	}
	return withProxy("deploy", cf, stderr, func(ctx context.Context, c *ctlClient) error {
		d := deployer{ctl: c, ref: ref, env: env, docker: docker, dryRun: dryRun, keep: keep, wait: o}
		return d.run(ctx, stdout, stderr)
	})
}

// deployer is one docker-proxy deploy.
type deployer struct {
	ctl    *ctlClient
	ref    string
	env    []string
	docker string
	dryRun bool
	keep   bool // the new container, when the deploy fails
	wait   waitOptions
}

func (d deployer) run(ctx context.Context, stdout, stderr io.Writer) error {
	s, err := d.ctl.status(ctx)
	if err != nil {
		return err
	}
	if s.Serving == nil {
		return failf(exitFailed, "no container serves %s: there is nothing to copy (start the first one with docker run)", s.Selector)
	}
	ref := d.ref
	switch {
	case ref != "":
	case s.Tag != "":
		ref = s.Tag
	default:
		ref = s.Serving.Image
	}
	if s.Tag != "" {
		if m, err := newTagMatcher(s.Tag); err == nil && !m.match(ref) {
			return failf(exitUsage, "-image %s is not of the proxy's -tag %s: the proxy would never serve it", ref, s.Tag)
		}
	}
	cli, err := dockerClient(config{docker: d.docker})
	if err != nil {
		return failf(exitUsage, "%w", err)
	}
	defer cli.Close()
	if _, err := cli.ImageInspect(ctx, ref); cerrdefs.IsNotFound(err) {
		return failf(exitUsage, "no image %s here: build or pull it first", ref)
	}
	spec, err := planNext(ctx, cli, s.Serving.ID, ref, d.env)
	if err != nil {
		return failf(exitFailed, "plan the copy of %s: %w", s.Serving.Container, err)
	}
	if d.dryRun {
		return spec.describe(stdout)
	}
	id, err := spec.start(ctx, cli)
	if err != nil {
		return failf(exitFailed, "start the copy of %s: %w", s.Serving.Container, err)
	}
	name := spec.Name
	if info, err := cli.ContainerInspect(ctx, id); err == nil {
		name = strings.TrimPrefix(info.Name, "/") // another name, if the planned one was taken meanwhile
	}
	p := newProgress(stderr, "deploy")
	p.note(fmt.Sprintf("started %s (%s) from %s, a copy of %s", shortID(id), name, ref, s.Serving.Container))
	for _, skip := range spec.Skipped {
		p.note(skip)
	}
	err = d.wait.wait(ctx, d.ctl, id, stdout, stderr)
	if exitCode(err) == exitUsage {
		// About the container just started: one the proxy does not
		// select (a label of the old image the new one lacks) never
		// serves, so the deploy failed.
		err = &cmdError{exitFailed, err}
	}
	if exitCode(err) == exitFailed && !d.keep {
		// The proxy leaves a container that failed alone; the one
		// deploy started for nothing goes, so the next deploy starts
		// from one container again.
		rmCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dockerTimeout)
		defer cancel()
		if rmErr := cli.ContainerRemove(rmCtx, id, container.RemoveOptions{Force: true}); rmErr != nil {
			return failf(exitFailed, "%w; could not remove %s: %v", err, shortID(id), rmErr)
		}
		return failf(exitFailed, "%w; removed %s (-keep keeps it)", err, shortID(id))
	}
	return err
}

var _ cloneAPI = (*client.Client)(nil)
