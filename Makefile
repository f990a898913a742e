# keyport — two commands on a fresh Debian machine:
#   make run    set up and serve keyport on its embedded defaults (SQLite + a SoftHSM token under ./var)
#   make test   install what the tests need and run them all (SoftHSM, PostgreSQL, pcscd + vpcd included)
GO        ?= go
BIN       := bin/keyport
DATA_DIR  ?= ./var

.PHONY: all deps runtime-deps build run test test-short fuzz bench vet clean generate

all: build

deps:
	./scripts/install-deps.sh

runtime-deps:
	./scripts/install-deps.sh --runtime

build:
	$(GO) build -o $(BIN) ./cmd/keyport

# The portal at http://127.0.0.1:8080 over plain HTTP: its cookies drop the
# Secure flag (KEYPORT_DEV_INSECURE_COOKIES, refused on non-loopback addresses).
run: runtime-deps build
	KEYPORT_DATA_DIR=$(DATA_DIR) KEYPORT_DEV_INSECURE_COOKIES=1 ./$(BIN) serve

# Regenerate the templ views (web/views/*_templ.go are committed; output is
# deterministic, so a clean tree stays clean).
generate:
	$(GO) tool templ generate -path web/views

test: deps generate
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
