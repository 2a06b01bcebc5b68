# The verbs people type. `make run` sets up and runs the exporter; `make test` sets up and
# runs every test (unit tests on this host, kernel and swarm tests inside the IPVS VM).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
PYTEST := $(BIN)/python -m pytest -p no:cacheprovider
VM     := tests/vm/vm-run

BENCH_STAMP := $(VENV)/.bench-installed
# make run's own venv: the exporter and its runtime dependencies only (no test or lint
# extras, no VM runner), so running it on a node installs nothing it does not need
RUN_VENV  := .venv-run
RUN_STAMP := $(RUN_VENV)/.installed

.PHONY: all deps deps-test venv build wheel deb run demo bench container-test lint format test test-unit test-integration test-beside-vm test-packaging test-vm \
        test-kernel test-swarm test-swarm-2node fuzz fuzz-short test-asan test-leaks soak slowloris clean

all: venv

deps:
	scripts/install-deps build

deps-test:
	scripts/install-deps test

$(STAMP): pyproject.toml setup.py build_ipvs.py $(wildcard csrc/*.c csrc/*.h)
	scripts/install-deps build
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,lint]' virtme-ng
	touch $@

venv: $(STAMP)

build: venv

## manylinux2014 wheels (x86_64, aarch64; glibc >= 2.17) with libnl bundled, cross-compiled
## with zig in a small build venv (build/wheel/venv) -> dist/
wheel:
	scripts/build-wheel

## the Debian package (the x86_64 wheel, its dependencies, the units, /etc/default) -> dist/
deb:
	scripts/build-deb

$(RUN_STAMP): pyproject.toml setup.py build_ipvs.py $(wildcard csrc/*.c csrc/*.h) $(shell find src -name "*.py")
	scripts/install-deps build
	test -x $(RUN_VENV)/bin/python || $(PYTHON) -m venv $(RUN_VENV)
	$(RUN_VENV)/bin/pip install -q .
	touch $@

## run the exporter (root or CAP_SYS_ADMIN+CAP_NET_ADMIN); flags go in ARGS="..."
run: $(RUN_STAMP)
	$(RUN_VENV)/bin/ingress_ipvs_exporter $(ARGS)

## the README example live, without a swarm node: a VM with dockerd, a swarm, the exporter
demo: deps-test venv
	demo/run

$(BENCH_STAMP): bench/requirements.txt $(STAMP)
	$(BIN)/pip install -q -r bench/requirements.txt
	touch $@

## side-by-side scrape benchmark in the IPVS VM -> build/vm/bench/{bench.json,bench.md,bench.png}
bench: venv $(BENCH_STAMP)
	scripts/install-deps bench
	bench/make-bench $(BENCH_ARGS)

## the container image built and the swarm stack deployed for real in the IPVS VM, offline:
## bases and wheels prepared here (packaging/docker/prepare-offline), build + deploy + scrape there
container-test: venv
	scripts/install-deps container
	packaging/docker/prepare-offline
	bash -o pipefail -c 'VM_TIMEOUT=3000 $(VM) --memory 6G -- bash tests/container/container-test 2>&1 | tee build/container-test.log'

## ruff (lint + format check), mypy --strict on src/, clang-format and -Werror on the C
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/clang-format --dry-run --Werror csrc/*.c csrc/*.h fuzz/*.c bench/*.c
	gcc -fsyntax-only -std=gnu11 -Wall -Wextra -Werror $$(pkg-config --cflags libnl-genl-3.0) csrc/ipvs.c csrc/speedups.c
	for f in fuzz/*.c; do gcc -fsyntax-only -std=gnu11 -Wall -Wextra -Werror -Icsrc $$(pkg-config --cflags libnl-genl-3.0) $$f || exit 1; done

## format the tree in place (what lint checks)
format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/clang-format -i csrc/*.c csrc/*.h fuzz/*.c bench/*.c

## every test: lint and unit tests here, then the kernel and swarm suites in one VM boot, then
## the integration and packaging tests and a minute of fuzzing here (TEST_JOBS=2: beside the VM)
TEST_JOBS ?= 1
test: deps-test venv lint test-unit
	$(MAKE) -j$(TEST_JOBS) --output-sync=line test-vm test-beside-vm

# the host's suites, one at a time: after the VM, or beside it in make's second job slot with
# TEST_JOBS=2. The package comes first (make deb, once): the VM's lifecycle test installs it
# and the packaging tests read it. -o deb: the inner make must not build it again (deb is
# phony, so test-packaging's prerequisite would: a minute more, under the VM's feet at -j2).
test-beside-vm: deb
	$(MAKE) -j1 -o deb test-integration test-packaging fuzz-short

# in-process tests: no subprocess, no listening socket
test-unit: venv
	$(PYTEST) -q tests/unit tests/fuzz

# the exporter (and openssl, promtool, scripts) run as processes, real HTTP over loopback
test-integration: venv
	$(PYTEST) -q tests/integration

# the wheel (built, installed in a fresh venv, its libnl checked, upgraded), the source build's
# message without libnl, the systemd unit (systemd-analyze) and the Debian package (lintian)
test-packaging: deps-test venv deb
	$(PYTEST) -q tests/packaging

# One VM boot runs every kernel test (tests/kernel, tests/swarm when present) in pytest sessions
# side by side (tests/vm/streams.py; each stream's output ends up in build/vm/streams/): the
# swarm labs; the tests under a private systemd, which share /run/systemd and Docker's netns
# path and so run one after another, with the HA pair; the other kernel tests. The Debian
# package's lifecycle test installs make deb's package there. Tests marked vm_alone change
# what every session shares (ip_vs unloaded): they run first, alone.
VM_PYTEST := -p no:cacheprovider -q --durations=15
VM_SHARED := -m "(kernel or swarm) and not vm_alone"
VM_SWARM_TESTS := $(wildcard tests/swarm/test_*.py)
VM_SYSTEMD_TESTS := tests/kernel/test_deb_kernel.py tests/kernel/test_capabilities_kernel.py tests/kernel/test_ha_scrapes_kernel.py
test-vm: deps-test venv deb
	VM_TIMEOUT=4800 $(VM) --memory 4G -- python tests/vm/streams.py --logs build/vm/streams \
	  --first 'alone: $(VM_PYTEST) -m "(kernel or swarm) and vm_alone" tests/kernel $(VM_SWARM_TESTS)' \
	  $(if $(VM_SWARM_TESTS),'swarm: $(VM_PYTEST) $(VM_SHARED) $(VM_SWARM_TESTS)') \
	  'systemd: $(VM_PYTEST) $(VM_SHARED) $(VM_SYSTEMD_TESTS)' \
	  'kernel: $(VM_PYTEST) $(VM_SHARED) $(filter-out $(VM_SYSTEMD_TESTS),$(wildcard tests/kernel/test_*.py))' \

test-kernel: deps-test venv deb
	$(VM) -- python -m pytest -p no:cacheprovider -q -m kernel tests/kernel

test-swarm: deps-test venv
	$(VM) -- python -m pytest -p no:cacheprovider -q -m swarm tests/swarm

## a two-node swarm (manager + worker dockerd in one VM): routing mesh, the global stack (image
## built offline as in container-test), Prometheus SD (not part of make test; docs/swarm-ipvs.md
## "Two nodes") -> build/vm/two-node.log
test-swarm-2node: deps-test venv
	scripts/install-deps container
	packaging/docker/prepare-offline
	mkdir -p build/vm && bash -o pipefail -c 'VM_TIMEOUT=4800 $(VM) --memory 6G -- python -m pytest -p no:cacheprovider -v -rA --durations=10 -m swarm2 tests/swarm/test_two_node.py 2>&1 | tee build/vm/two-node.log'

# Reliability (docs/reliability.md). The fuzzer builds with clang; the rest run in the VM.
## the shim's netlink parser under libFuzzer + ASan + UBSan: ten million executions (about an hour)
fuzz: deps-test venv
	fuzz/run.sh -runs=10000000

## the same for 60 seconds (part of make test)
fuzz-short: deps-test venv
	fuzz/run.sh 60

## the shim built with ASan + UBSan: unit tests here, the kernel suite in the VM
test-asan: deps-test venv
	fuzz/test-asan.sh

## 1,000 real dumps under valgrind (no leak, no invalid access) in the VM alone (make test: 200)
test-leaks: deps-test venv
	$(VM) -- env LEAK_DUMPS=$${LEAK_DUMPS:-1000} python -m pytest -p no:cacheprovider -q -m kernel tests/kernel/test_leaks_kernel.py

## 10 minutes of slowloris clients next to a scraper, over loopback: no traceback, every scrape answered
slowloris: venv
	SLOWLORIS_SECONDS=$${SLOWLORIS_SECONDS:-600} $(PYTEST) -q -s tests/integration/test_slowloris.py

## in the VM: 10,000 scrapes of the exporter while IPVS and its namespace churn -> build/vm/soak.json,
## then 10 minutes of an HA pair's concurrent scrapes under traffic and churn -> build/vm/ha-scrapes.json
## (SOAK_TESTS=tests/kernel/test_ha_scrapes_kernel.py for the second alone)
SOAK_TESTS ?= tests/kernel/test_soak_kernel.py tests/kernel/test_ha_scrapes_kernel.py
soak: deps-test venv
	VM_TIMEOUT=$${VM_TIMEOUT:-7200} $(VM) --memory 3G -- env SOAK_SCRAPES=$${SOAK_SCRAPES:-10000} SOAK_RECREATES=$${SOAK_RECREATES:-5} \
	  HA_SECONDS=$${HA_SECONDS:-600} HA_SERVICES=$${HA_SERVICES:-2000} HA_PARSE_SAMPLES=$${HA_PARSE_SAMPLES:-2} python -m pytest -p no:cacheprovider -q -s -m kernel $(SOAK_TESTS)

clean:
	rm -rf build dist $(RUN_VENV) src/*.egg-info src/ingress_ipvs_exporter/_*_cffi*.so src/ingress_ipvs_exporter/_*_cffi.c
