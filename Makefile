# One entry point for people and CI.
#   make up     install what is missing, run daemon + edge + HAProxy with the demo model
#   make test   install what is missing, run ruff, mypy and the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
APT_PACKAGES := haproxy postgresql memcached
TEST_APT_PACKAGES := prometheus iproute2 util-linux  # ip netns + nsenter: the multi-host test

.PHONY: up test lint unit integration system deps venv bench check-model clean protos

deps:
	@./ops/install-deps.sh $(APT_PACKAGES)

test-deps: deps
	@./ops/install-deps.sh $(TEST_APT_PACKAGES)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

up: deps venv
	$(VENV)/bin/falconctl up --root .

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: test-deps venv lint
	$(PY) -m pytest -q tests

unit: venv
	$(PY) -m pytest -q tests/unit

integration: test-deps venv
	$(PY) -m pytest -q tests/integration

system: deps venv
	$(PY) -m pytest -q tests/system

bench: deps venv
	@./ops/install-deps.sh wrk
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench.compare
	$(PY) -m bench.grpc_load
	$(PY) -m bench.tracing_cost

# Regenerate the gRPC face's modules from the vendored Triton protos (committed).
protos: venv
	PY=$(CURDIR)/$(PY) ./edge/grpcface/proto/generate.sh

check-model: venv
	$(PY) models/build_digits.py --check
	$(PY) models/build_iris.py --check

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
