#!/bin/sh
# deploy.sh: one zero-downtime deploy of the compose service web.
#
# It starts a second web container beside the running one, from the image
# WEB_IMAGE names now (say, just rebuilt with `docker build -t myapp:latest .`),
# then waits until docker-proxy has sent new connections to it and removed
# the old one, so that exactly one web container runs again.
#
#   WEB_IMAGE=myapp:latest ./deploy.sh
#
# DEPLOY_TIMEOUT (seconds, default 120) bounds the wait: make it longer
# than the proxy's -status_timeout plus -grace_period.
set -eu
cd "$(dirname "$0")"
service=web
timeout=${DEPLOY_TIMEOUT:-120}

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

# Scale to two without touching the running container: the new one starts
# beside it, and the proxy swaps to it once it answers its status URL.
docker-compose up -d --no-deps --scale "$service=2" --no-recreate "$service"

waited=0
while :; do
	now=$(ids)
	if [ "$(count "$now")" -eq 1 ] && [ "$now" != "$before" ]; then
		echo "deploy.sh: $service is now served by $(echo "$now" | cut -c1-12); the old one was removed"
		exit 0
	fi
	if [ "$waited" -ge "$timeout" ]; then
		echo "deploy.sh: after ${timeout}s the old $service container is still there: see docker-compose logs proxy" >&2
		echo "deploy.sh: (a new container that is not ready within -status_timeout is ignored: logged as 'ignored: not ready in time')" >&2
		exit 1
	fi
	sleep 1
	waited=$((waited + 1))
done
