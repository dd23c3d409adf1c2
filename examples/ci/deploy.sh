#!/bin/sh
# deploy.sh: build the service's image and deploy it through docker-proxy,
# from a CI job. It exits as docker-proxy deploy does, so the job fails
# when the deploy fails:
#
#   0  the new container serves and the old one is retired
#   1  the deploy failed: not ready within -status_timeout, died, rolled
#      back from, or superseded (deploy removed the container it started;
#      the old one still serves)
#   2  bad usage: a flag, no such image, no proxy at that socket
#   3  could not tell: the proxy unreachable, or DEPLOY_TIMEOUT ran out
#
#   IMAGE=myapp:latest ./deploy.sh [BUILD_CONTEXT]
#
# IMAGE is the tag the proxy's -tag names. The proxy runs on this host;
# for a proxy in a container (FROM scratch, docker.sock mounted), set
# PROXY_CONTAINER to its name: its own binary is the client then.
# DEPLOY_TIMEOUT (a Go duration, e.g. 5m) bounds the wait; by default it
# is the proxy's -status_timeout plus -grace_period, plus a minute.
set -eu
image=${IMAGE:?set IMAGE to the tag docker-proxy serves, e.g. myapp:latest}
context=${1:-.}

echo "deploy.sh: building $image from $context"
docker build -q -t "$image" "$context" >/dev/null

if [ -n "${PROXY_CONTAINER:-}" ]; then
	set -- docker exec "$PROXY_CONTAINER" /docker-proxy deploy
else
	set -- docker-proxy deploy
fi
if [ -n "${DEPLOY_TIMEOUT:-}" ]; then
	set -- "$@" -timeout "$DEPLOY_TIMEOUT"
fi
status=0
"$@" -image "$image" || status=$?
case $status in
0) echo "deploy.sh: $image is deployed" ;;
1) echo "deploy.sh: the deploy of $image failed; the previous container still serves" >&2 ;;
*) echo "deploy.sh: docker-proxy deploy exited $status" >&2 ;;
esac
exit "$status"
