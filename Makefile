# reconciler — `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help demo test test-fast lint bench schemas screenshots dist clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,lint]'
	@touch $(STAMP)

demo: $(STAMP) ## run the embedded default: two lanes, five tasks, a local forge, under .demo/
	$(BIN)/python -m reconciler.demo

test: $(STAMP) ## run the test suite (real git repositories, real agent processes, the real CLI)
	$(BIN)/pytest -n 2 -q

# The pure layers and the parsers: planner tables, manifests, the admin policy, state, agents.
FAST := tests/plan tests/observe tests/docs tests/test_daemon_wait.py tests/manifests tests/state tests/lanes tests/node/test_agent_*.py tests/node/test_forge_contract.py tests/notify/test_transitions.py tests/notify/test_config.py tests/test_cli_report.py

test-fast: $(STAMP) ## the quick subset (under a minute): planner, manifests, policy, state, agent parsers
	$(BIN)/pytest -n 2 -q $(FAST)

lint: $(STAMP) ## ruff (lint + format check), mypy --strict, import contracts
	$(BIN)/ruff check reconciler tests bench
	$(BIN)/ruff format --check reconciler tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP) ## print the table of measured figures (ratios and counts)
	$(BIN)/python -m bench

dist: $(STAMP) ## build the wheel (dist/agent_reconciler-*.whl) to install with pipx or pip
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation -w dist .

schemas: $(STAMP) ## regenerate the committed JSON Schemas under schemas/
	$(BIN)/reconciler schema --out schemas

screenshots: $(STAMP) ## remake docs/img/dashboard-*.png with the browser test (needs chromium)
	RECONCILER_SCREENSHOTS=$(CURDIR)/docs/img $(BIN)/pytest -q -p no:xdist tests/web/test_browser.py

clean: ## remove the virtualenv, the demo sandbox and caches
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache dist
