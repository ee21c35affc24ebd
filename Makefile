# labelloop: `make run` starts a demo, `make test` runs everything CI runs, `make bench` benchmarks.
PYTHON ?= python3
VENV := .venv
LS_VENV := .cache/ls-venv
LS_VERSION := 1.23.2
PIP := $(VENV)/bin/pip --disable-pip-version-check -q

.PHONY: install ls chromium run test lint typecheck unit integration bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch first, pinned, so nothing pulls a multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev]'
	touch $@

$(LS_VENV)/bin/label-studio:
	# Label Studio lives in its own venv: labelloop needs only its SDK.
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip --disable-pip-version-check -q install label-studio==$(LS_VERSION)

install: $(VENV)/.installed
ls: $(LS_VENV)/bin/label-studio

run: install ls
	$(VENV)/bin/labelloop demo --ls-bin $(LS_VENV)/bin/label-studio

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

unit: install
	$(VENV)/bin/pytest -m "not integration" -q

integration: install ls
	TEST_LABEL_STUDIO_BIN=$(LS_VENV)/bin/label-studio $(VENV)/bin/pytest -m integration -q

chromium:
	# Debian's chromium drives the dashboard's browser test (headless, localhost only).
	@test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)

test: install ls chromium lint typecheck
	TEST_LABEL_STUDIO_BIN=$(LS_VENV)/bin/label-studio $(VENV)/bin/pytest -q

bench: install ls
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(VENV)/bin/python $$f --quick || exit 1; done

clean:
	rm -rf $(VENV) .cache .demo .mypy_cache .ruff_cache .pytest_cache
