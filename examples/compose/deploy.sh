#!/bin/sh
# deploy.sh: one zero-downtime deploy of the compose service web.
#
# It starts a second web container beside the running one, from the image
# WEB_IMAGE names now (say, just rebuilt with `docker build -t myapp:latest .`),
# then waits with `docker-proxy wait` until the proxy serves it and has
# removed the old one. It exits as wait does: 0 when the deploy is done,
# 1 when it failed (the new container is then removed, so that the old one
# is again the only one), 3 when it could not tell.
#
#   WEB_IMAGE=myapp:latest ./deploy.sh
#
# DEPLOY_TIMEOUT (seconds; default: the proxy's -status_timeout plus
# -grace_period, plus a minute) bounds the wait.
set -eu
cd "$(dirname "$0")"
service=web

ids() { docker-compose ps -q "$service"; }
count() { echo "$1" | grep -c . || true; }

before=$(ids)
case $(count "$before") in
0)
	echo "deploy.sh: no $service container yet: start the project first with docker-compose up -d" >&2
	exit 1
	;;
1) ;;
*)
	echo "deploy.sh: $(count "$before") $service containers exist: a deploy is in progress, or its new container was ignored" >&2
	echo "deploy.sh: see docker-compose logs proxy, and remove the one that does not serve with docker rm -f" >&2
	exit 1
	;;
esac
proxy=$(docker-compose ps -q proxy)
if [ -z "$proxy" ]; then
	echo "deploy.sh: the proxy service is not running: docker-compose up -d" >&2
	exit 1
fi

# Scale to two without touching the running container: the new one starts
# beside it, and the proxy swaps to it once it answers its status URL.
docker-compose up -d --no-deps --scale "$service=2" --no-recreate "$service"
new=$(ids | grep -v "^$before\$" || true)
if [ "$(count "$new")" -ne 1 ]; then
	echo "deploy.sh: docker-compose started no new $service container" >&2
	exit 1
fi

# The proxy's image is FROM scratch: its binary is the client.
set -- /docker-proxy wait
if [ -n "${DEPLOY_TIMEOUT:-}" ]; then
	set -- "$@" -timeout "${DEPLOY_TIMEOUT}s"
fi
status=0
docker exec "$proxy" "$@" "$new" || status=$?
case $status in
0)
	echo "deploy.sh: $service is now served by $(echo "$new" | cut -c1-12); the old one was removed"
	;;
1)
	echo "deploy.sh: the deploy failed; removing the new container $(echo "$new" | cut -c1-12), so that the old one stays the only one" >&2
	docker rm -f "$new" >/dev/null
	;;
*)
	echo "deploy.sh: could not tell whether the deploy worked (exit $status): see docker-compose logs proxy" >&2
	;;
esac
exit "$status"
