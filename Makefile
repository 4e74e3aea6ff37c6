# fedtune — `make demo` runs the federated demo, `make test` runs the tests (`make test-fast` for daily work).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard proto/fedtune/v1/*.proto)
PYTEST_ARGS ?= -rfE

.PHONY: install test test-fast demo proto check-protos lint bench compose-smoke clean help

help:
	@echo "make install       create $(VENV) with the coordinator, worker, demo and dev dependencies"
	@echo "make demo          run the 4-site federated demo on MiniLM + BBC News (about 10 minutes on 2 CPU cores)"
	@echo "make test          check the generated protobuf code, then run the whole test suite (what CI runs)"
	@echo "make test-fast     a fast loop for daily work: the suite without the slow tests, on SQLite, on 2 processes (under 2 minutes)"
	@echo "make proto         regenerate fedtune/v1/ from proto/fedtune/v1/*.proto"
	@echo "make lint          ruff + mypy + the layer contract (import-linter, .importlinter)"
	@echo "make bench         run the benchmarks in bench/ (figures land in bench/results/)"
	@echo "make compose-smoke start docker/docker-compose.yml for real (CPU workers), run one round, tear down"
	@echo "                   (slow, not part of 'make test'; needs a Docker engine; see docker/README.md)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[worker,demo,dev]"
	touch $(STAMP)

install: $(STAMP)

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

check-protos: $(STAMP)
	@tmp=$$(mktemp -d) && \
	$(PY) -m grpc_tools.protoc -Iproto --python_out=$$tmp --pyi_out=$$tmp --grpc_python_out=$$tmp $(PROTOS) && \
	for f in $$tmp/fedtune/v1/*; do \
	  diff -u fedtune/v1/$$(basename $$f) $$f >/dev/null || { echo "fedtune/v1/$$(basename $$f) is stale: run 'make proto' and commit"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "generated protobuf code is up to date"

# The fast tests run on TEST_WORKERS processes (pytest-xdist; each test has its own folders, ports and
# PostgreSQL database), then the slow ones one at a time: they start coordinators and workers that train,
# and some check how quickly processes stop, which two of them at once on 2 cores would skew.
TEST_WORKERS ?= 2
test: check-protos
	@rc=0; \
	echo "== fast tests on $(TEST_WORKERS) processes"; \
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) $(PYTEST_ARGS) --durations=5 || rc=1; \
	echo "== slow tests, one at a time"; \
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS) --durations=10 || rc=1; \
	exit $$rc

# Tests marked `slow` (they train a model or start processes) are left out, and the database is SQLite
# only unless TEST_FAST_DATABASE_URL names a PostgreSQL server; `make test` still runs everything.
TEST_FAST_DATABASE_URL ?=
test-fast: $(STAMP)
	FEDTUNE_TEST_DATABASE_URL="$(TEST_FAST_DATABASE_URL)" $(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) $(PYTEST_ARGS) --durations=5

demo: $(STAMP)
	$(PY) -m demo

lint: $(STAMP)
	$(VENV)/bin/ruff check fedtune coordinator worker storage admin bench demo tests
	$(VENV)/bin/mypy fedtune coordinator worker storage admin bench demo
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) bench/aggregate.py

# Not part of `test`: it builds images (the first time several minutes) and needs a Docker engine.
# Bounded: SMOKE_BUILD_TIMEOUT for the image builds, SMOKE_TIMEOUT for the run (docker/smoke.sh).
compose-smoke:
	docker/smoke.sh

clean:
	rm -rf $(VENV) .pytest_cache
