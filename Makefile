# labelloop: `make run` starts a demo, `make test` runs everything CI runs, `make bench` benchmarks.
PYTHON ?= python3
VENV := .venv
LS_VENV := .cache/ls-venv
LS_VERSION := 1.23.2
PIP := $(VENV)/bin/pip --disable-pip-version-check -q

.PHONY: install ls chromium postgres redis run test lint typecheck unit unit-postgres integration bench clean

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

unit: install redis
	$(VENV)/bin/pytest -m "not integration" -q

# The same suite with every test's store on a throwaway PostgreSQL server instead of SQLite.
unit-postgres: install postgres redis
	$(VENV)/bin/pytest -m "not integration" -q --database postgresql

integration: install ls redis
	TEST_LABEL_STUDIO_BIN=$(LS_VENV)/bin/label-studio $(VENV)/bin/pytest -m integration -q

chromium:
	# Debian's chromium drives the dashboard's browser test (headless, localhost only).
	@test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)

postgres:
	# Debian's PostgreSQL server binaries; the tests start a throwaway server from them.
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq postgresql)

redis:
	# Debian's Redis server; the tests of loop.executor rq start a throwaway one from it.
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)

test: install ls chromium postgres redis lint typecheck
	TEST_LABEL_STUDIO_BIN=$(LS_VENV)/bin/label-studio $(VENV)/bin/pytest -q
	$(VENV)/bin/pytest -m "not integration" -q --database postgresql

bench: install ls
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(VENV)/bin/python $$f --quick || exit 1; done

clean:
	rm -rf $(VENV) .cache .demo .mypy_cache .ruff_cache .pytest_cache
