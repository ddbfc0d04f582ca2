# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# uv installs from requirements.lock in seconds; a machine without uv gets it inside .venv, with pip.
UV_VERSION := 0.13.9
UV := $(or $(shell command -v uv 2>/dev/null),$(VENV)/bin/uv)
BENCH_STAMP := $(VENV)/.bench-installed-stamp

export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: demo test serve bench install lock clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/bin/uv: | $(PY)
	$(PY) -m pip install -qq --disable-pip-version-check uv==$(UV_VERSION)

# The exact packages of requirements.lock (hash-checked), then this project itself, editable.
# Compiled to bytecode once, here, as pip does and uv does not by default: otherwise every new Python
# process (a flow run, a CLI call, a worker) compiles Prefect again where PYTHONDONTWRITEBYTECODE is set.
$(STAMP): requirements.lock pyproject.toml | $(PY) $(UV)
	$(UV) pip install -q --python $(PY) --require-hashes --compile-bytecode -r requirements.lock
	$(UV) pip install -q --python $(PY) --no-deps -e .
	@$(UV) pip check -q --python $(PY) || { echo "requirements.lock misses a dependency of pyproject.toml: run make lock"; exit 1; }
	touch $(STAMP)

## Re-pin every package after a change to the dependencies in pyproject.toml (commit requirements.lock).
lock: | $(UV)
	$(UV) pip compile -q pyproject.toml --extra test --universal --python-version 3.11 --generate-hashes \
		--custom-compile-command "make lock" -o requirements.lock

# The benchmarks also plot (matplotlib, the `bench` extra).
$(BENCH_STAMP): $(STAMP)
	$(UV) pip install -q --python $(PY) -e '.[test,bench]'
	touch $(BENCH_STAMP)

## Run the demo batch (100 jobs) end to end on a local AWS emulator; the last line is the RunSummary.
demo: $(STAMP)
	$(PY) deployments/demo/run_demo.py

## Start a Prefect server, a worker and the AWS emulator, with the deployments registered (Ctrl-C stops).
serve: $(STAMP)
	$(PY) deployments/local_stack.py

## Run the test suite, in four parallel pytest-xdist workers (each with its own AWS emulator; one shared Prefect test server).
## Four on two cores: the end-to-end tests spend much of their time waiting on processes they started.
test: $(STAMP)
	$(PY) -m pytest -n 4 $(TEST_ARGS)

## Run every benchmark and print its figures (about 10 minutes); BENCH_ARGS=--write-readme also puts them in benchmarks/README.md.
bench: $(BENCH_STAMP)
	$(PY) -m benchmarks.run_all $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .demo .pytest_cache *.egg-info
