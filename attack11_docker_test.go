package main

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestDockerAttackDeployCopyNotSelected: the proxy selects -tag and a
// label the old build carried; the new build lacks it, so the copy is not
// a container this proxy serves. deploy must fail and remove the container
// it started, not leave it running beside the serving one.
func TestDockerAttackDeployCopyNotSelected(t *testing.T) {
	tag := newTag(t, "v1")
	labelled := tag[:strings.LastIndex(tag, ":")] + ":labelled"
	if err := buildImage(labelled, map[string]string{"Dockerfile": "FROM " + serverImage + "\nLABEL tier=web\n"}, nil); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := dockerCli.ImageTag(ctx, labelled, tag); err != nil {
		t.Fatal(err)
	}
	old := startCtr(t, tag)
	name := nextName(ctrName(t, old.id)) // the copy's
	removeNamedAtEnd(t, name)
	p := startCtlProxy(t, tag, "-label", "tier=web", "-grace_period", "1s", "-status_timeout", "4s")
	eventually(t, 10*time.Second, "the old container serves", func() bool {
		st := p.status(t)
		return st.Serving != nil && st.Serving.ID == old.id
	})
	if err := dockerCli.ImageTag(ctx, serverImage, tag); err != nil { // the new build, without the label
		t.Fatal(err)
	}
	r := runCmd(t, time.Minute, "deploy", "-control", p.control)
	t.Logf("deploy: exit %d, stderr:\n%s", r.code, r.stderr)
	if r.code == exitOK {
		t.Fatalf("deploy of a copy the proxy does not select exited 0")
	}
	if left := ctrsNamed(t, name); len(left) != 0 {
		t.Errorf("deploy exited %d and left its container %s (%s) running beside the serving one", r.code, shortID(left[0].ID), left[0].State)
	}
}
