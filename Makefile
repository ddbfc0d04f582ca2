# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-installed-stamp

export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: demo test serve bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# The benchmarks also plot (matplotlib, the `bench` extra).
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -qq --disable-pip-version-check -e '.[test,bench]'
	touch $(BENCH_STAMP)

## Run the demo batch (100 jobs) end to end on a local AWS emulator; the last line is the RunSummary.
demo: $(STAMP)
	$(PY) deployments/demo/run_demo.py

## Start a Prefect server, a worker and the AWS emulator, with the deployments registered (Ctrl-C stops).
serve: $(STAMP)
	$(PY) deployments/local_stack.py

## Run the test suite.
test: $(STAMP)
	$(PY) -m pytest

## Run every benchmark and print its figures (about 10 minutes); BENCH_ARGS=--write-readme also puts them in benchmarks/README.md.
bench: $(BENCH_STAMP)
	$(PY) -m benchmarks.run_all $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .demo .pytest_cache *.egg-info
