# Two commands a newcomer types on a fresh machine: `make quickstart` and `make test`.
# Each does the set-up it needs: a .venv with the right torch build, then panglot in editable mode.
#
# CPU machines (default): torch==2.13.0, which pip takes from the local CPU wheel.
# GPU machines:           make TORCH='torch==2.13.0' TORCH_INDEX=https://download.pytorch.org/whl/cu128 test
#                         (any CUDA build of torch; the index is only used when you ask for it).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.panglot-installed
PYTEST_ARGS ?=

.PHONY: setup quickstart test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# idle OpenMP threads sleep instead of spinning: on a shared machine spinning threads cost many times over
quickstart: $(STAMP)
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(VENV)/bin/panglot quickstart

test: $(STAMP)
	$(PY) -m ruff check src tests recipes benchmarks
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check src tests recipes benchmarks

bench: $(STAMP)
	$(PY) benchmarks/backbone_train.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
