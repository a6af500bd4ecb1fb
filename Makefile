# Meter Relay: everything runs through the project's own .venv (CPython 3.13, the
# Lambda runtime's version). `make test` builds it on first use.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
# Found once per make run: a plain recursive variable would rerun the script, and print its
# "not found" advice, at each use in a recipe.
PYTHON ?= $(eval PYTHON := $$(shell scripts/find-python313))$(PYTHON)
STAMP := $(VENV)/.installed
# checkov pins a boto3 that cannot live beside requirements-dev.txt's: its own venv.
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
# pip-tools, pinned, in a venv of its own: it follows pip's internals, so it keeps its own pip.
LOCK_VENV := .venv-lock
LAYER_LOCK := layers/meter_relay/requirements.txt
ARGS ?=

export AWS_DEFAULT_REGION ?= us-east-1
export SAM_CLI_TELEMETRY := 0

.PHONY: help venv test lint typecheck validate checkov build-check pytest run chaos bench emulator emulator-bench local-env invoke build lock layer-report clean

help:
	@echo "make test            venv + ruff + mypy + sam validate --lint + checkov + the whole test suite"
	@echo "make checkov         checkov on template.yaml and on its SAM transform (docs/security.md)"
	@echo "make run ARGS=       the local stack: moto + emulator + forwarder, 20,000 events by default"
	@echo "make chaos           the local stack with every fault at once: must lose nothing"
	@echo "make bench           forwarder vs baseline vs the stripe SDK (bench/results.json)"
	@echo "make emulator ARGS=  run the Stripe meter API emulator (e.g. ARGS=\"--port 12111\")"
	@echo "make emulator-bench  measure the emulator's stream requests/s"
	@echo "make local-env       moto :5000 + emulator :12111, provisioned as events/env.json names them"
	@echo "make invoke FN=LogicalId EVENT=events/x.json   invoke a function as sam local invoke would"
	@echo "make build           sam build (Python 3.13 from .venv on PATH)"
	@echo "make lock            lock the layer's whole dependency tree, with hashes ($(LAYER_LOCK))"
	@echo "make layer-report    the built layer's size and cold-start cost (docs/deploy.md)"

$(STAMP): requirements-dev.txt layers/meter_relay/requirements.txt constraints.txt pyproject.toml
	@test -n "$(PYTHON)" || { echo "no Python 3.13: see the message above" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@# the wheel holds meter_relay only: devkit (and tests) are found through the checkout itself
	$(BIN)/python -c 'import pathlib, sys, sysconfig; pathlib.Path(sysconfig.get_path("purelib"), "meter_relay_checkout.pth").write_text(sys.argv[1] + "\n")' "$(CURDIR)"
	@touch $(STAMP)

venv: $(STAMP)

$(CHECKOV_STAMP): requirements-checkov.txt constraints-checkov.txt
	@test -n "$(PYTHON)" || { echo "no Python 3.13: see the message above" >&2; exit 1; }
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-checkov.txt -c constraints-checkov.txt
	$(CHECKOV_VENV)/bin/python -m pip check
	@touch $(CHECKOV_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy
	@# each function is its own top-level `app` module, so each is checked on its own
	@for fn in functions/*/app.py; do echo "mypy $$fn"; $(BIN)/mypy --no-error-summary $$fn || exit 1; done

validate: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/sam validate --lint

# Fails on any failed check, parsing error, or skip without a justification (devkit/checkov_gate.py).
checkov: $(STAMP) $(CHECKOV_STAMP)
	$(BIN)/python -m devkit.checkov_gate --checkov $(CHECKOV_VENV)/bin/checkov

pytest: $(STAMP)
	$(BIN)/pytest $(ARGS)

test: lint typecheck validate checkov build-check pytest

bench: $(STAMP)
	$(BIN)/python -m devkit.bench $(ARGS)

chaos: $(STAMP)
	$(BIN)/python -m devkit.chaos $(ARGS)

run: $(STAMP)
	$(BIN)/python -m devkit.local_stack $(ARGS)

emulator: $(STAMP)
	$(BIN)/python -m devkit.emulator $(ARGS)

emulator-bench: $(STAMP)
	$(BIN)/python -m devkit.emulator.loadtest $(ARGS)

local-env: $(STAMP)
	$(BIN)/python -m devkit.local_env $(ARGS)

invoke: $(STAMP)
	$(BIN)/python -m devkit.invoke $(FN) -e $(EVENT) $(if $(ENV_VARS),--env-vars $(ENV_VARS)) $(ARGS)

# sam build into a scratch folder (no container: the venv's Python 3.13 is on PATH), and the
# layer must hold the library.
build-check: $(STAMP)
	@rm -rf .aws-sam/ci-build && mkdir -p .aws-sam
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/sam build --build-dir .aws-sam/ci-build --cache-dir .aws-sam/ci-cache > .aws-sam/ci-build.log 2>&1 || { cat .aws-sam/ci-build.log; exit 1; }
	test -f .aws-sam/ci-build/MeterRelayLayer/python/meter_relay/forwarder.py
	test -f .aws-sam/ci-build/ForwarderFunction/app.py
	$(BIN)/python scripts/layer_report.py --check-only .aws-sam/ci-build/MeterRelayLayer/python
	@rm -rf .aws-sam/ci-build && echo "sam build: OK"

build: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/sam build

# requirements.in, at constraints.txt's versions (the tests' own), compiled for Python 3.13 (the
# runtime's). Hashes of every file of each release: sam build's first pass downloads for this
# machine's platform, Lambda's arm64 wheels come after.
lock:
	@test -n "$(PYTHON)" || { echo "no Python 3.13: see the message above" >&2; exit 1; }
	@test -x $(LOCK_VENV)/bin/python || $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check pip==26.3 pip-tools==7.7.0
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes \
	  --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
	  --constraint constraints.txt --output-file $(LAYER_LOCK) layers/meter_relay/requirements.in
	@# Lambda's own files (python3.13, arm64) are among the hashes
	$(LOCK_VENV)/bin/python -m pip download --quiet --disable-pip-version-check --require-hashes \
	  --no-deps --only-binary=:all: --platform manylinux2014_aarch64 --implementation cp \
	  --python-version 3.13 --abi cp313 -r $(LAYER_LOCK) -d .aws-sam/lock-check

layer-report: $(STAMP)
	@rm -rf .aws-sam/layer-report && mkdir -p .aws-sam
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/sam build MeterRelayLayer --build-dir .aws-sam/layer-report --cache-dir .aws-sam/ci-cache > .aws-sam/layer-report.log 2>&1 || { cat .aws-sam/layer-report.log; exit 1; }
	$(BIN)/python scripts/layer_report.py .aws-sam/layer-report/MeterRelayLayer/python $(ARGS)

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) $(LOCK_VENV) .aws-sam .mypy_cache .ruff_cache .pytest_cache .hypothesis
	rm -rf .cache examples/node/node_modules
