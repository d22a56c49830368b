# Two-command setup: `make test` and `make demo` create .venv if missing, install the pinned stack, and run.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
LOCK   := requirements/constraints.txt
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

export TF_CPP_MIN_LOG_LEVEL := 2
export MPLBACKEND := Agg
export CUDA_VISIBLE_DEVICES :=
export PYTHONUNBUFFERED := 1

.PHONY: install test demo benchmarks notebooks notebooks-strip clean

install: $(STAMP)

$(STAMP): $(LOCK) setup.cfg pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check --upgrade "pip>=24" setuptools wheel
	$(PIP) install -q --disable-pip-version-check -c $(LOCK) torch torchvision tensorflow-cpu -e ".[test,tsne]"
	@# tf-keras and keras-surgeon declare pins that conflict with tensorflow-cpu / Keras 3 (docs/environment.md)
	$(PIP) install -q --disable-pip-version-check --no-deps -c $(LOCK) tf-keras kerassurgeon importlib-metadata lazy-importer
	@touch $@

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests

demo: $(STAMP)
	$(PY) benchmarks/demo.py

benchmarks: $(STAMP)
	for b in poisoners reverse_engineering cluster_impurity aegis fine_pruning; do $(PY) benchmarks/$$b.py --quick || exit 1; done

notebooks: $(STAMP)  # execute the tutorials in place, for reading (strip them before committing)
	$(PY) notebooks/execute.py

notebooks-strip: $(STAMP)
	$(PY) notebooks/execute.py --strip

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
