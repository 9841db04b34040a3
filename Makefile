# Two entry points (README): `make demo` runs the main job, `make test` runs the tests.
# Each creates the virtual environment in .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' -e plugins/mlflow-unlearn-example  # the example plugin: the contract tests run over it
	touch $@

.PHONY: venv demo test unit test-all bench
venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/mlflow run . -e main --env-manager local --experiment-name mlflow-unlearn

test: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider

# The developer's loop: everything but the integration tests (real servers, subprocesses,
# `mlflow run`, the pipeline), on both cores; under a minute on 2 cores.
unit: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider -m "not integration" -n 2 --dist loadscope

test-all: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider -m "slow or not slow"
