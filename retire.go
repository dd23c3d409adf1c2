package main

import (
	"context"
	"fmt"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
)

// retireMode says what happens to a container once it is superseded.
type retireMode string

const (
	retireRemove retireMode = "rm"   // docker rm -f (the documented behaviour)
	retireStop   retireMode = "stop" // docker stop; needs no remove permission
	retireNone   retireMode = "none" // left running; needs no write permission
)

// dockerRetirer retires containers through the Docker API.
type dockerRetirer struct {
	docker      dockerAPI
	mode        retireMode
	stopTimeout time.Duration // rm: stop first, with this timeout (0: rm -f at once)
}

// retirer retires one container: the proxy's only write to Docker.
type retirer interface {
	retire(ctx context.Context, id string) error
	String() string // what was done, for the log line
}

func (r dockerRetirer) String() string {
	switch r.mode {
	case retireStop:
		return "stopped"
	case retireNone:
		return "left running"
	}
	return "removed"
}

// dockerTimeout bounds every Docker call but the event stream: a call that
// hangs is an error, retried like any other.
const dockerTimeout = 10 * time.Second

func (r dockerRetirer) retire(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, dockerTimeout+r.stopTimeout)
	defer cancel()
	var err error
	switch r.mode {
	case retireNone:
		return nil
	case retireStop:
		err = r.stop(ctx, id)
	default:
		if r.stopTimeout > 0 {
			err = r.stop(ctx, id)
		}
		if err == nil {
			err = r.docker.ContainerRemove(ctx, id, container.RemoveOptions{Force: true})
			if err != nil {
				err = fmt.Errorf("remove %s: %w", shortID(id), err)
			}
		}
	}
	if cerrdefs.IsNotFound(err) {
		return nil // gone already, as wanted
	}
	return err
}

// stop sends SIGTERM, then SIGKILL after the stop timeout (the daemon's
// default for the container when none is set).
func (r dockerRetirer) stop(ctx context.Context, id string) error {
	var opts container.StopOptions
	if r.stopTimeout > 0 {
		secs := int((r.stopTimeout + time.Second - 1) / time.Second)
		opts.Timeout = &secs
	}
	if err := r.docker.ContainerStop(ctx, id, opts); err != nil {
		return fmt.Errorf("stop %s: %w", shortID(id), err)
	}
	return nil
}
