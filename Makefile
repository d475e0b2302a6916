# `make demo` and `make test` work on a fresh clone with only Python 3.11+ and make:
# they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SCAN_STAMP := .venv-scan/.installed-stamp

.PHONY: demo test quick lint install clean scan wheel-check

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "kubejoin needs Python 3.11 or newer; set PYTHON=...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,lint]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/kubejoin demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The edit-test loop (under a minute on 2 cores): every test but those marked slow, which start a
# process or take over about a second. CI runs `make test`, which runs them all.
quick: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Policy scan of the manifests and the Dockerfile. checkov lives in its own venv: its pinned
# dependencies must not decide ours.
$(SCAN_STAMP):
	$(PYTHON) -m venv .venv-scan
	.venv-scan/bin/python -m pip install -q --upgrade pip
	.venv-scan/bin/python -m pip install -q checkov
	touch $(SCAN_STAMP)

scan: $(SCAN_STAMP)
	.venv-scan/bin/checkov --directory . --framework kubernetes dockerfile --skip-download --quiet --compact

# What the Dockerfile does, without a Docker engine: build the wheels, install them into a clean
# venv with no index, and run the installed command.
wheel-check: $(STAMP)
	rm -rf build/wheels build/clean-venv
	$(BIN)/python -m pip wheel -q --wheel-dir build/wheels .
	$(PYTHON) -m venv build/clean-venv
	build/clean-venv/bin/python -m pip install -q --no-index --find-links build/wheels kubejoin
	cd build && clean-venv/bin/kubejoin --help >/dev/null
	cd build && PYTHONDONTWRITEBYTECODE=1 clean-venv/bin/kubejoin demo >/dev/null
	@echo "wheel-check: kubejoin installs from its wheels alone and runs"

clean:
	rm -rf $(VENV) .venv-scan build *.egg-info .pytest_cache .mypy_cache .ruff_cache
