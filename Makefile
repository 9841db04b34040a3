# Two entry points (README): `make demo` runs the main job, `make test` runs the tests.
# Each creates the virtual environment in .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

.PHONY: venv demo test test-all bench
venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/mlflow run . -e main --env-manager local --experiment-name mlflow-unlearn

test: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider

test-all: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider -m "slow or not slow"
