# hostgate — the two commands: `make demo` and `make test`. Both do all set-up themselves.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
HOSTGATE := $(VENV)/bin/hostgate
export HOSTGATE_HOME ?= $(CURDIR)/.hostgate

.PHONY: setup system-packages venv kafka-jars test demo lint typecheck bench clean

setup: system-packages venv kafka-jars

system-packages:
	@scripts/install-system-packages.sh

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv: system-packages $(VENV)/.installed

kafka-jars: venv
	@$(HOSTGATE) kafka fetch

test: setup
	@scripts/run-tests.sh

demo: setup
	@scripts/run-demo.sh $(DEMO_ARGS)

lint: venv
	$(VENV)/bin/ruff check services tests bench
	$(VENV)/bin/mypy

bench: setup
	@scripts/run-bench.sh

clean:
	-@$(HOSTGATE) kafka down 2>/dev/null
	rm -rf $(VENV) .hostgate .pytest_cache .mypy_cache .ruff_cache
