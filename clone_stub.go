package main

import (
	"context"
	"errors"
	"io"

	"github.com/docker/docker/client"
)

type cloneAPI interface{ ImageInspect(ctx context.Context, ref string, opts ...client.ImageInspectOption) (imageInspect, error) }
type imageInspect = struct{}
type nextSpec struct {
	Name    string
	Skipped []string
}

func planNext(ctx context.Context, docker any, servingID, ref string, env []string) (nextSpec, error) {
	return nextSpec{}, errors.New("stub")
}
func (s nextSpec) start(ctx context.Context, docker any) (string, error) { return "", errors.New("stub") }
func (s nextSpec) describe(w io.Writer)                                    {}
