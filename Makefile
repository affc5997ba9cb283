# The front door: every target does its own set-up, so each works on a fresh checkout.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
MOUNTPOINT ?= $(HOME)/n/dockerfs
SWARM_MOUNTPOINT ?= $(HOME)/n/swarm
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
# The demos are the tests' harness (tests/support), run from the checkout; not in the wheel.
HARNESS := PYTHONPATH=$(CURDIR)/tests $(BIN)/python -m
# Exact versions and hashes of every Python package, from the lock (scripts/lock writes
# it); then pyfuse3 and the project itself, built with the locked tools.
define install_locked # VENV
	$(PYTHON) -m venv $(1)
	$(1)/bin/pip install -q --require-hashes --no-deps -r $(LOCK)
endef
# Run a second time as on stock pyfuse3 (DOCKERFS_STOCK_PYFUSE3=1).
STOCK_TESTS := tests/test_mount.py tests/test_control.py tests/test_reliability.py tests/test_root_writes.py \
	tests/test_kernel_cache.py tests/test_container_fs.py tests/test_walk.py

PREFIX ?= /usr/local
DESTDIR ?=
MAN_DIR := docs/man

.PHONY: run demo demo-swarm test test-stock-venv bench bench-scale lint lock deps deps-docker deps-9p clean \
	man install uninstall

$(STAMP): pyproject.toml $(LOCK) scripts/build-pyfuse3 $(wildcard patches/pyfuse3/*.patch)
	./scripts/install-system-deps
	$(call install_locked,$(VENV))
	./scripts/build-pyfuse3 $(VENV)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

deps: $(STAMP)

deps-docker: $(STAMP)
	./scripts/install-system-deps --with-docker

# The 9P tests: diod's clients, and qemu with Debian's kernel for the kernel's own client.
deps-9p: $(STAMP)
	./scripts/install-qemu-deps

## make run: mount the containers of your Docker engine at ~/n/dockerfs; with no engine
## answering, the demo's private one (which needs docker.io, installed then, and root)
run: deps
	@mkdir -p $(MOUNTPOINT) 2>/dev/null || true  # a dead mount is dockerfs-fuse's to explain
	@if $(BIN)/dockerfs-fuse --ping >/dev/null; then \
	  $(BIN)/dockerfs-fuse $(MOUNTPOINT) && \
	  echo "mounted at $(MOUNTPOINT); unmount with: fusermount3 -u $(MOUNTPOINT)"; \
	else \
	  echo "no Docker engine answers: mounting a private one with sample containers" \
	    "instead, as make demo does" >&2; \
	  ./scripts/install-system-deps --with-docker && \
	  $(HARNESS) support.demo $(MOUNTPOINT); \
	fi

## make demo: a private dockerd with sample containers, mounted at ~/n/dockerfs
demo: deps-docker
	@mkdir -p $(MOUNTPOINT) 2>/dev/null || true
	$(HARNESS) support.demo $(MOUNTPOINT)

## make demo-swarm: a private 3-node Docker Swarm (network namespaces on this host), its
## cluster mounted with --swarm at ~/n/swarm (services/, nodes/, tasks/)
demo-swarm: deps-docker
	mkdir -p $(SWARM_MOUNTPOINT)
	$(HARNESS) support.demo_swarm $(SWARM_MOUNTPOINT)

## make test: unit, integration (private dockerd, real mount) and interop tests;
## then the mount tests again as on stock pyfuse3, without kernel caching
test: deps-docker deps-9p
	$(BIN)/pytest -q $(PYTEST_ARGS)
	DOCKERFS_STOCK_PYFUSE3=1 $(BIN)/pytest -q $(STOCK_TESTS)
	$(MAKE) --no-print-directory test-stock-venv

## make test-stock-venv: mount tests on the stock pyfuse3 release itself, in .venv-stock
test-stock-venv: deps-docker
	$(call install_locked,.venv-stock)
	./scripts/build-pyfuse3 --stock .venv-stock
	.venv-stock/bin/pip install -q --no-deps --no-build-isolation -e .
	.venv-stock/bin/pytest -q tests/test_kernel_cache.py tests/test_mount.py -k 'not make_built'

## make bench: figures for 10, 100 and 1000 containers, then a 3-node swarm's
## 50 services x 4 replicas (bench_swarm.py), containers/clone against docker run -d
## (bench_clone.py), `ls images`/`ls volumes` at 500 each (bench_objects.py), exec
## sessions against `docker exec` (bench_exec.py), cp, tar -x and sed -i through root/
## against docker cp and docker exec (bench_writes.py), then make bench-scale (not part of
## make test)
bench: deps-docker
	$(BIN)/python bench/bench.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_swarm.py $(BENCH_SWARM_ARGS)
	$(BIN)/python bench/bench_clone.py $(BENCH_CLONE_ARGS)
	$(BIN)/python bench/bench_objects.py $(BENCH_OBJECTS_ARGS)
	$(BIN)/python bench/bench_exec.py $(BENCH_EXEC_ARGS)
	$(BIN)/python bench/bench_writes.py $(BENCH_WRITES_ARGS)
	$(MAKE) --no-print-directory bench-scale

## make bench-scale: 100, 1,000 and 10,000 created containers mounted with -a (bench/scale.py;
## SCALE_ARGS="--sizes 100,1000 --keep DIR" for others, DIR keeping them for the next run)
bench-scale: deps-docker
	$(BIN)/python bench/scale.py $(SCALE_ARGS)

## make man: dockerfs-fuse(1) and dockerfs-9p(1) in docs/man, from their sources there
## (NAME.1.md) and the argument parsers (scripts/gen-man); committed, so that the wheel ships
## them and tests/test_man.py sees them lag; `man -l docs/man/dockerfs-fuse.1`
man: deps
	$(BIN)/python scripts/gen-man $(MAN_DIR)

## make install: link dockerfs-fuse and dockerfs-9p into $(PREFIX)/bin (mount(8) drops PATH,
## and mount.fuse3's /bin/sh finds the program of fuse.dockerfs-fuse in its default path),
## pointing at this checkout's .venv, and install the man pages; PREFIX=/usr/local, DESTDIR honoured
install: man
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1
	ln -sf $(CURDIR)/$(BIN)/dockerfs-fuse $(DESTDIR)$(PREFIX)/bin/dockerfs-fuse
	ln -sf $(CURDIR)/$(BIN)/dockerfs-9p $(DESTDIR)$(PREFIX)/bin/dockerfs-9p
	install -m 644 $(MAN_DIR)/dockerfs-fuse.1 $(MAN_DIR)/dockerfs-9p.1 \
	  $(DESTDIR)$(PREFIX)/share/man/man1/

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/dockerfs-fuse $(DESTDIR)$(PREFIX)/bin/dockerfs-9p \
	  $(DESTDIR)$(PREFIX)/share/man/man1/dockerfs-fuse.1 \
	  $(DESTDIR)$(PREFIX)/share/man/man1/dockerfs-9p.1

## make lock: resolve pyproject's ranges again into requirements.lock (newest allowed
## versions, with hashes); `make test` then checks it
lock:
	./scripts/lock

lint: deps
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .venv-stock build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
