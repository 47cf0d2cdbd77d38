# mlsec-operator — every entry point a person or CI needs.
#   make demo   bring up the real local environment and run the promotion scenario
#   make test   lint, type-check, layering check, unit and integration tests (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: all dev deps build test unit integration lint typecheck layers crds manifests demo bench fuzz clean down

all: test

# System packages (Debian): slapd and ldap-utils for the test directory, PostgreSQL for dynamic
# database credentials. Installed only when missing; needs root, as on this project's machines.
deps:
	@if ! command -v slapd >/dev/null && [ ! -x /usr/sbin/slapd ]; then \
	  echo "installing slapd, ldap-utils (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slapd ldap-utils >/dev/null; \
	fi
	@if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
	  echo "installing postgresql (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	fi

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

dev: $(BIN)/.installed

# Build (once, cached under ~/.cache/mlsec) the Go binaries: kube-apiserver, controller-manager, etcd, helm.
build: dev deps
	$(BIN)/mlsec local build

lint: dev
	$(BIN)/ruff check .

typecheck: dev
	$(BIN)/mypy

layers: dev
	$(BIN)/lint-imports

# crds/ alone would leave the chart behind: regenerate everything from its one source.
crds: manifests

# crds/, the chart's generated files (CRDs, admission policies, RBAC, OpenReports CRDs) and
# manifests/install.yaml, from their one source each; `mlsec manifests --check` only compares.
manifests: dev
	$(BIN)/mlsec manifests

unit: dev
	$(BIN)/pytest -q tests/unit

integration: build
	$(BIN)/pytest -q tests/integration

test: build lint typecheck layers
	$(BIN)/pytest -q -p no:cacheprovider tests

demo: build
	$(BIN)/python -m mlsec.demo

down: dev
	$(BIN)/mlsec local down

bench: build
	$(BIN)/python -m bench

# The long fuzzing run (issue 9): 10,000 hypothesis examples per test; make test runs ~200.
fuzz: dev
	MLSEC_FUZZ_EXAMPLES=10000 $(BIN)/pytest -q tests/unit/fuzz

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
