# persona: `make demo` runs the pipeline end to end on embedded defaults,
# `make test` passes the tests. Both install first; a warm second run installs nothing.
SHELL := /bin/bash
PYTHON_BOOT ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
JARS := .cache/jars/.resolved
PYTEST_ARGS ?=

.PHONY: install demo test test-fast bench bench-quick docs clean distclean

install: $(STAMP) $(JARS)

$(PY):
	$(PYTHON_BOOT) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check uv==0.13.9

# Exact versions come from requirements.lock (regenerate with `make lock`).
$(STAMP): $(PY) pyproject.toml requirements.lock
	$(UV) pip sync --quiet --python $(PY) requirements.lock
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	touch $(STAMP)

# Delta jars: resolved from Maven Central once, cached under .cache/jars.
$(JARS): $(STAMP)
	$(PY) -m spark_jobs.jars > /dev/null
	touch $(JARS)

lock:
	$(UV) pip compile --quiet pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

demo: install
	$(VENV)/bin/persona demo

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not integration and not e2e" $(PYTEST_ARGS)

bench: install
	for b in ingest behaviour encoder serving sql; do $(PY) -m bench.$$b || exit 1; done

bench-quick: install
	for b in ingest behaviour encoder serving sql; do $(PY) -m bench.$$b --quick || exit 1; done

docs: install
	$(PY) -m spark_jobs.silver.feature_dictionary > docs/features.md

clean:
	rm -rf .persona .pytest_cache .hypothesis spark-warehouse metastore_db derby.log

distclean: clean
	rm -rf $(VENV) .cache
