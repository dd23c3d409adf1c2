#!/usr/bin/env bash
# Installs bin/docker-proxy as $PREFIX/bin/docker-proxy without breaking
# Docker: Docker's own userland proxy is also called docker-proxy, and
# dockerd finds it beside itself, in its libexec folders, or on its PATH.
# So this refuses a folder that holds dockerd or is one of Docker's libexec
# folders, and a folder that comes before Docker's own docker-proxy on
# dockerd's PATH, unless /etc/docker/daemon.json pins Docker's own with
# "userland-proxy-path".
#
# Settings (environment): PREFIX (/usr/local), DOCKERD_PATH (the PATH
# systemd gives dockerd), DAEMON_JSON (/etc/docker/daemon.json).
set -euo pipefail

bin=${BIN:-bin/docker-proxy}
prefix=${PREFIX:-/usr/local}
dest=$prefix/bin
dockerd_path=${DOCKERD_PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}
daemon_json=${DAEMON_JSON:-/etc/docker/daemon.json}

refuse() {
	echo "install: refusing $dest/docker-proxy: $*" >&2
	exit 1
}

# ours tells whether a docker-proxy binary is this one (an earlier install).
ours() {
	"$1" -version 2>/dev/null | grep -q '^docker-proxy .*(commit '
}

[ -e "$dest/dockerd" ] && refuse "dockerd lives in $dest, and it looks for its own docker-proxy beside itself"
case "$dest" in
/usr/local/libexec/docker | /usr/libexec/docker | /usr/local/lib/docker | /usr/lib/docker | /usr/local/libexec | /usr/libexec)
	refuse "$dest is where dockerd looks for its own docker-proxy"
	;;
esac

pinned=
if [ -f "$daemon_json" ] && grep -q '"userland-proxy-path"' "$daemon_json"; then
	pinned=1
fi
if [ -z "$pinned" ]; then
	before=1 # walking dockerd's PATH, still before $dest?
	IFS=: read -ra dirs <<<"$dockerd_path"
	for dir in "${dirs[@]}"; do
		if [ "$dir" = "$dest" ]; then
			before=
			continue
		fi
		f=$dir/docker-proxy
		if [ -x "$f" ] && ! ours "$f"; then
			if [ -z "$before" ]; then
				refuse "Docker's own userland proxy is $f, and dockerd would find ours in $dest first.
Pin Docker's own in $daemon_json: {\"userland-proxy-path\": \"$f\"} (then restart dockerd),
or install elsewhere: make install PREFIX=/opt/docker-proxy"
			fi
			break # Docker's own is found first anyway
		fi
	done
fi

install -d "$dest"
install -m 0755 "$bin" "$dest/docker-proxy"
echo "installed $dest/docker-proxy"
