# The image holds nothing but the static binary that `make image` builds
# (CGO_ENABLED=0), so it builds with no registry at all.
FROM scratch
COPY bin/docker-proxy /docker-proxy
ENTRYPOINT ["/docker-proxy"]
