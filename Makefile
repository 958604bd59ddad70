# Quick start: `make demo` (set up, then run the main job on the embedded demo) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast lint bench load
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]'
	touch $@

demo: setup
	$(BIN)/exports-pipeline demo

# Every layer: unit, dagster, integration (README, "Tests"). Needs PostgreSQL and Chromium.
test: setup
	$(BIN)/python -m pytest

# The unit layer alone: no server. PostgreSQL's URL points at a closed port (9, discard), so a unit test
# that reaches for the database fails loudly instead of passing on a machine that happens to run one.
test-fast: setup
	EXPORTS_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:9/postgres $(BIN)/python -m pytest -m unit -q

# ruff's rules and format (pyproject.toml, [tool.ruff]); `ruff format .` and `ruff check --fix .` repair most.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python bench/bench.py $(BENCH_ARGS)

# Not in CI: 1,000 heavy-tailed campaigns through the production instance, against psql (bench/load.py --help).
# The daemon and webserver it starts write events in batches (DAGSTER_EVENT_BATCH_SIZE), as deployments do.
load: setup
	$(BIN)/python bench/load.py $(LOAD_ARGS)
