# Leasehold's developer and CI entry points. CI runs these targets and nothing
# else (see .ci/run). Everything needs only the Go toolchain: staticcheck is
# pinned by the tool directive in go.mod and run with `go tool`. The race
# detector in `make test` also needs a C compiler (cgo) on Linux.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

GO ?= go

.PHONY: help test lint fuzz bench cluster

help: ## List the targets.
	@echo 'Usage: make <target>'
	@echo
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

test: ## Run every test with the race detector, in shuffled order.
	CGO_ENABLED=1 $(GO) test -race -shuffle=on -timeout 20m ./...

lint: ## Check formatting, then run go vet and staticcheck.
	@unformatted=$$(gofmt -l .); \
	if [ -n "$$unformatted" ]; then \
		echo 'gofmt: these files need formatting (run gofmt -w):'; \
		echo "$$unformatted"; \
		exit 1; \
	fi
	$(GO) vet ./...
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

bench: ## Benchmark limiter and fsm (6 runs, for benchstat) into bench.txt.
	$(GO) test -run='^$$' -bench=. -benchmem -count=6 ./limiter/ ./fsm/ | tee bench.txt

cluster: ## Start a local cluster (arrives with issue 3).
	@echo 'leasehold cluster: not implemented yet (issue 3)'
	@exit 1
