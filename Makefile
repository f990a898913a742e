# keyport — two commands on a fresh Debian machine:
#   make run    install what building and serving need, then serve keyport on its embedded defaults
#               (SQLite + a SoftHSM token under ./var)
#   make demo   the same with demo data under ./var/demo: virtual modules with free domains, a handset
#               agent for each, a demo provider whose credentials and the modules' EIDs it prints
#   make test   install what the tests need and run them all (SoftHSM, PostgreSQL, pcscd + vpcd included)
# The Debian package lists are in scripts/install-deps.sh (as root it installs
# what is missing; otherwise it prints the apt-get line and stops).
GO        ?= go
BIN       := bin/keyport
DATA_DIR  ?= ./var
DEMO_DIR  ?= ./var/demo

.PHONY: all deps run-deps check-deps check-generated build run demo test test-short fuzz bench vet clean generate

all: build

deps:
	./scripts/install-deps.sh

run-deps:
	./scripts/install-deps.sh --run

build:
	$(GO) build -o $(BIN) ./cmd/keyport

# The portal at http://127.0.0.1:8080 over plain HTTP: its cookies drop the
# Secure flag (KEYPORT_DEV_INSECURE_COOKIES, refused on non-loopback addresses),
# and one admin may run every operation (KEYPORT_DUAL_CONTROL=1; serve says so).
run: run-deps build
	KEYPORT_DATA_DIR=$(DATA_DIR) KEYPORT_DEV_INSECURE_COOKIES=1 KEYPORT_DUAL_CONTROL=1 ./$(BIN) serve

# make run with demo data (README, "Demo"): keyport demo makes the demo batch,
# its modules and accounts the first time and prints what to try. The demo
# directory is marked; serve refuses it and demo refuses any other data.
# The cmd/keyport acceptance test runs this recipe's command line.
demo: run-deps build
	KEYPORT_DATA_DIR=$(DEMO_DIR) KEYPORT_DEV_INSECURE_COOKIES=1 ./$(BIN) demo

# Regenerate the templ views (web/views/*_templ.go are committed; output is
# deterministic, so a clean tree stays clean).
generate:
	$(GO) tool templ generate -path web/views

# Fails when the --build/--runtime package lists miss something the binary
# needs (derived from the code, the .pc files and ldd).
check-deps:
	GO=$(GO) ./scripts/check-deps.sh

# Fails when web/views/*_templ.go are stale (it regenerates them first).
check-generated:
	GO=$(GO) ./scripts/check-generated.sh

test: deps
	$(GO) mod tidy -diff
	GO=$(GO) ./scripts/check-deps.sh
	GO=$(GO) ./scripts/check-generated.sh
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 60m ./...

test-short:
	$(GO) test -count=1 ./...

# Fuzz every parser for FUZZTIME each (corpus entries found are kept under testdata/fuzz).
FUZZTIME ?= 30s
fuzz:
	./scripts/fuzz-all.sh $(FUZZTIME)

bench:
	$(GO) test -run '^$$' -bench . -benchtime 2s ./...

vet:
	$(GO) vet ./...

clean:
	rm -rf bin
