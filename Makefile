# Leasehold's developer and CI entry points. CI runs these targets and nothing
# else (see .ci/run). Everything needs only the Go toolchain: staticcheck is
# pinned by the tool directive in go.mod and run with `go tool`. The race
# detector in `make test` also needs a C compiler (cgo) on Linux, and its
# console test Debian's chromium, which `make test` installs when missing.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

GO ?= go

.PHONY: help test lint fuzz bench cluster generate check-generate chaos bench-compare chromium screenshots ai-demo

help: ## List the targets.
	@echo 'Usage: make <target>'
	@echo
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

test: chromium ## Run every test with the race detector, in shuffled order (and the clock knob's build); installs chromium for the console's browser test.
	CGO_ENABLED=1 $(GO) test -race -shuffle=on -timeout 20m ./...
	CGO_ENABLED=1 $(GO) test -race -shuffle=on -tags chaosclock ./internal/chaosclock/ ./client/

lint: ## Check formatting, then run go vet (for Linux, macOS and Windows) and staticcheck.
	@unformatted=$$(gofmt -l .); \
	if [ -n "$$unformatted" ]; then \
		echo 'gofmt: these files need formatting (run gofmt -w):'; \
		echo "$$unformatted"; \
		exit 1; \
	fi
	$(GO) vet ./...
	GOOS=darwin $(GO) vet ./...
	GOOS=windows $(GO) vet ./...
	$(GO) tool staticcheck ./...

fuzz: ## Run each fuzz target for 15s.
	@files=$$(grep -l 'func Fuzz' -r --include='*_test.go' --exclude-dir=testdata . | sort || true); \
	if [ -z "$$files" ]; then echo 'fuzz: no fuzz targets'; exit 0; fi; \
	for file in $$files; do \
		pkg=$$(dirname "$$file"); \
		for target in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$$file"); do \
			echo "fuzz: $$pkg $$target"; \
			$(GO) test -run='^$$' -fuzz="^$$target\$$" -fuzztime=15s "$$pkg"; \
		done; \
	done

chromium: ## Install Debian's chromium if missing (the console's browser test needs it).
	@command -v chromium >/dev/null || { \
		echo 'chromium: installing the Debian package (for the console test in a headless browser)'; \
		apt-get update -qq; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	}

screenshots: chromium ## Run the console's browser test against a real cluster and save its screenshots in docs/.
	LEASEHOLD_SCREENSHOTS=$(CURDIR)/docs $(GO) test -count=1 -run '^TestConsoleInABrowser$$' ./internal/e2e/

bench: ## Benchmark limiter and fsm (6 runs, for benchstat) into bench.txt.
	$(GO) test -run='^$$' -bench=. -benchmem -count=6 ./limiter/ ./fsm/ | tee bench.txt

cluster: ## Start a local 3-node cluster over mutual TLS on 127.0.0.1:7101-7103 (data and certificates in ./data); kill -USR1 restarts dead nodes; Ctrl-C stops it.
	$(GO) build -o bin/leasehold ./cmd/leasehold
	bin/leasehold cluster --nodes 3 --dir ./data --base-port 7100

AI_DEMO_FLAGS ?=

ai-demo: ## ~90 s: a local 3-node TLS cluster and a fake AI provider; 4 processes × 16 goroutines call it through openai-go with the guard, vs per-process x/time/rate and no limiter; then an outside spender. Fails on any 429 through Leasehold.
	$(GO) build -o bin/leasehold ./cmd/leasehold
	bin/leasehold ai-demo $(AI_DEMO_FLAGS)

PROTOC ?= protoc

generate: ## Regenerate transport/leaseholdpb from transport/leasehold.proto (needs protoc).
	@command -v $(PROTOC) >/dev/null || { echo 'generate: protoc not found; on Debian: apt-get install protobuf-compiler'; exit 1; }
	$(GO) build -o bin/protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go
	$(GO) build -o bin/protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc
	$(PROTOC) --plugin=protoc-gen-go=bin/protoc-gen-go --plugin=protoc-gen-go-grpc=bin/protoc-gen-go-grpc \
		-I transport --go_out=transport/leaseholdpb --go_opt=paths=source_relative \
		--go-grpc_out=transport/leaseholdpb --go-grpc_opt=paths=source_relative \
		transport/leasehold.proto

check-generate: generate ## Fail if the committed generated code is not what make generate writes.
	@git diff --exit-code -- transport/leaseholdpb || { echo 'check-generate: run make generate and commit the result'; exit 1; }
	@test -z "$$(git status --porcelain -- transport/leaseholdpb)" || { echo 'check-generate: untracked generated files'; exit 1; }

CHAOS_TIME ?= 120s
CHAOS_SEED ?= 1
CHAOS_NODES ?= 3
CHAOS_NEMESIS ?= kill,pause,partition,stall,clock,membership

chaos: ## A short chaos run over mutual TLS (real nodes, SDK workers; kill -9, SIGSTOP, partitions, answers held, clock faults, membership changes; checkers) into reports/.
	$(GO) run ./cmd/jepsen --time $(CHAOS_TIME) --nodes $(CHAOS_NODES) --seed $(CHAOS_SEED) --nemesis $(CHAOS_NEMESIS) --dir reports

BENCH_TIME ?= 10s
BENCH_CLIENTS ?= 8
BENCH_FLAGS ?=

bench-compare: ## Redis+Lua (clocks right, ±2s skew) vs Leasehold central and lease on a hot key, and per round trip; one table.
	@command -v redis-server >/dev/null || { \
		echo 'bench-compare: installing redis-server (Debian package)'; \
		apt-get update -qq; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	}
	$(GO) build -o bin/leasehold ./cmd/leasehold
	bin/leasehold bench compare --redis-server "$$(command -v redis-server)" \
		--duration $(BENCH_TIME) --clients $(BENCH_CLIENTS) $(BENCH_FLAGS)
