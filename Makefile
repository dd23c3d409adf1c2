# docker-proxy: every target does one thing; README.md names them.

BIN      := bin/docker-proxy
IMAGE    ?= docker-proxy:latest
GO       ?= go
GOFLAGS_BUILD := -trimpath
PREFIX   ?= /usr/local
COMMIT   := $(shell git rev-parse --short HEAD 2>/dev/null)

.PHONY: build test simulate image demo lint portable bench bench-quick gobench soak fuzz install clean

build:
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -ldflags "-X main.commit=$(COMMIT)" -o $(BIN) .

# The whole suite, against the real Docker daemon, under the race detector.
test:
	$(GO) test -race -count=1 -timeout 60m ./...

# The deploy rule's simulation, with new random seeds for SIMULATE_TIME
# (make test runs 300 fixed seeds).
SIMULATE_TIME ?= 5m
simulate:
	@mkdir -p bin; $(GO) test -count=1 -timeout 0 -run '^TestSimulate$$' -simulate.duration=$(SIMULATE_TIME) -v . >bin/simulate.log 2>&1; \
		status=$$?; grep -Ev '^ *(=== RUN|--- PASS|=== NAME)' bin/simulate.log; exit $$status

image: build
	DOCKER_BUILDKIT=0 docker build -q -t $(IMAGE) .

# A live zero-downtime deploy on the local Docker daemon.
demo: build
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o bin/testserver ./internal/testserver
	$(GO) run ./internal/demo -proxy $(BIN) -server bin/testserver

lint:
	$(GO) vet ./...
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# The long soak: 20 deploys under load, with -drain off and on; prints the
# counts. (make test runs the same test with 3 deploys.)
soak:
	@mkdir -p bin; SOAK_DEPLOYS=20 $(GO) test -race -count=1 -timeout 30m -run '^TestDockerSoak$$' -v . >bin/soak.log 2>&1; \
		status=$$?; grep -E 'deploys|^(---|ok|FAIL)' bin/soak.log; exit $$status

# Short fuzz runs of the input parsers and of the connection path (the
# seed corpora run in make test).
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParsePorts$$' -fuzztime 5s .
	$(GO) test -run '^$$' -fuzz '^FuzzParseStatusURL$$' -fuzztime 5s .
	$(GO) test -run '^$$' -fuzz '^FuzzPair$$' -fuzztime 30s .

# The proxy (and its tests) build and vet on the systems
# without splice (the copy path falls back to plain reads and writes).
portable:
	GOOS=darwin $(GO) vet . ./internal/...
	GOOS=freebsd $(GO) vet . ./internal/...

# Installs into $(PREFIX)/bin, refusing any place where dockerd would take
# it for its own userland proxy (see scripts/install.sh).
install: build
	PREFIX=$(PREFIX) BIN=$(BIN) scripts/install.sh

clean:
	rm -rf bin

# Benchmarks against the real daemon: docker-proxy beside a direct
# connection, HAProxy, nginx's stream module and a bare Go splice proxy
# (see bench/).
bench:
	$(GO) run ./bench

bench-quick:
	$(GO) run ./bench -quick

# Go benchmarks of the accept-dial-copy path on loopback.
gobench:
	$(GO) test -run '^$$' -bench . -benchmem .
