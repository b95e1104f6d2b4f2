# halochat — the two commands: `make run` (serve on the embedded database) and `make test`.
# The interpreter is pyenv's 3.13.0 when present (see .python-version), else python3.13 on PATH.
PYENV_PY := $(HOME)/.pyenv/versions/$(shell cat .python-version)/bin/python
PYTHON ?= $(if $(wildcard $(PYENV_PY)),$(PYENV_PY),python3.13)
VENV := .venv
PY := $(VENV)/bin/python
HALOCHAT := $(VENV)/bin/halochat
STAMP := $(VENV)/.installed

.PHONY: run run-workers test lint bench bench-load bench-cluster bench-timers install seed clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# make run turns the playground on (docs/playground.md) and, on the embedded database, seeds
# the demo users first: their tokens, the admin's included, are printed above the server log.
run: $(STAMP)
	@if [ -z "$$MONGODB_URI" ]; then HALOCHAT_DEV_MODE=1 $(HALOCHAT) seed; fi
	HALOCHAT_DEV_MODE=1 HALOCHAT_PLAYGROUND=$${HALOCHAT_PLAYGROUND:-true} $(HALOCHAT) serve

# Several workers on this machine (cluster mode): one embedded database and one nats-server
# from the venv shared by all (docs/scaling.md). WORKERS=4 make run-workers
run-workers: $(STAMP)
	@if [ -z "$$MONGODB_URI" ]; then HALOCHAT_DEV_MODE=1 $(HALOCHAT) seed; fi
	HALOCHAT_DEV_MODE=1 HALOCHAT_WORKERS=$${WORKERS:-2} $(HALOCHAT) serve

seed: $(STAMP)
	HALOCHAT_DEV_MODE=1 $(HALOCHAT) seed

# Two workers, a module's tests on one (docs/testing.md): ~3.5 min instead of 6 on 2 cores.
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) bench/store.py

# Load (halochat vs bare relay) and timer benchmarks: docs/performance.md. ARGS passes flags,
# e.g. make bench-load ARGS="--sessions 1000".
bench-load: $(STAMP)
	$(PY) bench/load.py $(ARGS)

# Cluster mode: single process vs 1 and 2 processes on NATS, and the two seq writers.
bench-cluster: $(STAMP)
	$(PY) bench/seq_writer.py
	$(PY) bench/load.py --processes 2 --no-relay $(ARGS)

bench-timers: $(STAMP)
	$(PY) bench/timers.py $(ARGS)

clean:
	rm -rf var .pytest_cache
