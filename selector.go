package main

import (
	"fmt"
	"strings"

	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
)

// tagMatcher tells whether an image reference names the -tag image.
// References are compared after normalisation, so "myapp", "myapp:latest"
// and "docker.io/library/myapp:latest" are the same.
type tagMatcher struct {
	want reference.Named
}

func newTagMatcher(tag string) (tagMatcher, error) {
	ref, err := normalizeRef(tag)
	if err != nil {
		return tagMatcher{}, fmt.Errorf("%q: want an image reference like myapp:latest: %w", tag, err)
	}
	return tagMatcher{want: ref}, nil
}

func normalizeRef(s string) (reference.Named, error) {
	ref, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		return nil, err
	}
	return reference.TagNameOnly(ref), nil
}

func (m tagMatcher) String() string { return reference.FamiliarString(m.want) }

func (m tagMatcher) match(image string) bool {
	ref, err := normalizeRef(image)
	return err == nil && ref.String() == m.want.String()
}

// eventFilter asks the daemon only for container events of the image's
// repository. The daemon compares the image name with its tag stripped, so
// every tag of the repository still arrives; match() picks ours.
func (m tagMatcher) eventFilter() filters.Args {
	return filters.NewArgs(
		filters.Arg("type", string(events.ContainerEventType)),
		filters.Arg("image", reference.FamiliarName(m.want)),
		filters.Arg("image", m.want.Name()),
	)
}

// label is one -label KEY=VALUE.
type label struct{ key, value string }

func (l label) String() string { return l.key + "=" + l.value }

// parseLabels reads one -label value: KEY=VALUE, or several, comma-delimited.
func parseLabels(s string) ([]label, error) {
	var ls []label
	for _, item := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(item, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("label %q: want KEY=VALUE, like com.docker.compose.service=web", item)
		}
		ls = append(ls, label{k, v})
	}
	return ls, nil
}

// selector picks the containers the proxy serves: those made from the tag
// (if -tag is set) that carry every -label.
type selector struct {
	tag    *tagMatcher
	labels []label
}

func newSelector(tag string, labels []label) (selector, error) {
	s := selector{labels: labels}
	if tag != "" {
		m, err := newTagMatcher(tag)
		if err != nil {
			return s, err
		}
		s.tag = &m
	}
	return s, nil
}

// String names the selection in logs: the tag, and the labels if any.
func (s selector) String() string {
	var parts []string
	if s.tag != nil {
		parts = append(parts, s.tag.String())
	}
	for _, l := range s.labels {
		parts = append(parts, l.String())
	}
	return strings.Join(parts, " ")
}

// match tells whether a container of image with labels is selected.
func (s selector) match(image string, labels map[string]string) bool {
	return s.labelsMatch(labels) && (s.tag == nil || s.tag.match(image))
}

// maybe tells whether a listed container may be selected. The list reports
// a container's image as the reference it was created with, unless that
// reference now names another image (the tag was rebuilt for a deploy):
// then it reports the image id, and only inspect tells the reference.
func (s selector) maybe(image, imageID string, labels map[string]string) bool {
	return s.labelsMatch(labels) &&
		(s.tag == nil || s.tag.match(image) || image == imageID || strings.HasPrefix(image, "sha256:"))
}

func (s selector) labelsMatch(labels map[string]string) bool {
	for _, l := range s.labels {
		if v, ok := labels[l.key]; !ok || v != l.value {
			return false
		}
	}
	return true
}

// eventFilter asks the daemon only for container events that may be
// selected; match decides.
func (s selector) eventFilter() filters.Args {
	args := filters.NewArgs(filters.Arg("type", string(events.ContainerEventType)))
	if s.tag != nil {
		for _, kv := range s.tag.eventFilter().Get("image") {
			args.Add("image", kv)
		}
	}
	for _, l := range s.labels {
		args.Add("label", l.String())
	}
	return args
}
