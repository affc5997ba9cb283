# The front door: every target does its own set-up, so each works on a fresh checkout.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
MOUNTPOINT ?= $(HOME)/n/dockerfs
SWARM_MOUNTPOINT ?= $(HOME)/n/swarm
STAMP  := $(VENV)/.installed
# Run a second time as on stock pyfuse3 (DOCKERFS_STOCK_PYFUSE3=1).
STOCK_TESTS := tests/test_mount.py tests/test_control.py tests/test_reliability.py \
	tests/test_kernel_cache.py

.PHONY: run demo demo-swarm test test-stock-venv bench lint deps deps-docker deps-9p clean

$(STAMP): pyproject.toml scripts/build-pyfuse3 $(wildcard patches/pyfuse3/*.patch)
	./scripts/install-system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	./scripts/build-pyfuse3 $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

deps: $(STAMP)

deps-docker: $(STAMP)
	./scripts/install-system-deps --with-docker

# The 9P tests: diod's clients, and qemu with Debian's kernel for the kernel's own client.
deps-9p: $(STAMP)
	./scripts/install-qemu-deps

## make run: mount the containers of your Docker engine at ~/n/dockerfs
run: deps
	mkdir -p $(MOUNTPOINT)
	@$(BIN)/dockerfs-fuse $(MOUNTPOINT) || { \
	  echo "make run needs a reachable Docker engine; 'make demo' starts a private one" >&2; exit 1; }
	@echo "mounted at $(MOUNTPOINT); unmount with: fusermount3 -u $(MOUNTPOINT)"

## make demo: a private dockerd with sample containers, mounted at ~/n/dockerfs
demo: deps-docker
	mkdir -p $(MOUNTPOINT)
	$(BIN)/python -m dockerfs_fuse.demo $(MOUNTPOINT)

## make demo-swarm: a private 3-node Docker Swarm (network namespaces on this host), its
## cluster mounted with --swarm at ~/n/swarm (services/, nodes/, tasks/)
demo-swarm: deps-docker
	mkdir -p $(SWARM_MOUNTPOINT)
	$(BIN)/python -m dockerfs_fuse.demo_swarm $(SWARM_MOUNTPOINT)

## make test: unit, integration (private dockerd, real mount) and interop tests;
## then the mount tests again as on stock pyfuse3, without kernel caching
test: deps-docker deps-9p
	$(BIN)/pytest -q $(PYTEST_ARGS)
	DOCKERFS_STOCK_PYFUSE3=1 $(BIN)/pytest -q $(STOCK_TESTS)
	$(MAKE) --no-print-directory test-stock-venv

## make test-stock-venv: mount tests on the stock pyfuse3 release itself, in .venv-stock
test-stock-venv: deps-docker
	$(PYTHON) -m venv .venv-stock
	.venv-stock/bin/pip install -q --upgrade pip
	./scripts/build-pyfuse3 --stock .venv-stock
	.venv-stock/bin/pip install -q -e '.[test]'
	.venv-stock/bin/pytest -q tests/test_kernel_cache.py tests/test_mount.py -k 'not make_built'

## make bench: figures for 10, 100 and 1000 containers, then a 3-node swarm's
## 50 services x 4 replicas (bench_swarm.py; not part of make test)
bench: deps-docker
	$(BIN)/python bench/bench.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_swarm.py $(BENCH_SWARM_ARGS)

lint: deps
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .venv-stock build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
