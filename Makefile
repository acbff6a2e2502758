# OpenQueue developer commands. Everything runs from a local virtual
# environment that `make` creates on first use; nothing else is needed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint sql fmt bench bench-large bench-soak chaos chaos-citus clean docs demo test-citus test-citus-contract

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## demo: a live tour on an embedded PostgreSQL (DEMO_ARGS="--keep" keeps it up; "--dsn DSN" for your own)
DEMO_ARGS ?=
demo: $(STAMP)
	$(BIN)/openqueue demo $(DEMO_ARGS)

## test: lint, then the whole test suite (embedded PostgreSQL unless OPENQUEUE_TEST_DSN is set)
test: lint
	$(BIN)/python -m pytest

## test-citus: on a Citus cluster (coordinator + 2 workers; builds Citus from ../shared/citus/ into .cache/citus once): the scale-out tests (tests/citus) and the contract suite through the coordinator, in one session on one cluster (CI round 3; see docs/scaling.md for what skips there and why)
test-citus: $(STAMP)
	OPENQUEUE_TEST_BACKEND=citus $(BIN)/python -m pytest tests/citus tests/sql tests/python tests/security tests/worker

## test-citus-contract: the contract suite alone through a Citus coordinator (tests/sql, tests/python, tests/security, tests/worker)
test-citus-contract: $(STAMP)
	OPENQUEUE_TEST_BACKEND=citus $(BIN)/python -m pytest tests/sql tests/python tests/security tests/worker

## lint: SQL (sqlfluff), Python (ruff), and the generated installer is up to date
lint: $(STAMP)
	$(BIN)/sqlfluff lint sql/
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -c 'import sys; from openqueue_py.migrate import main; sys.exit(main(["--check"]))'

## bench: issue 6's short figures (1-5, 8, 10), each against its yardstick; rows go to bench/RESULTS.md
bench: $(STAMP)
	$(BIN)/python -m bench.drain
	$(BIN)/python -m bench.drain_one
	$(BIN)/python -m bench.drain_async
	$(BIN)/python -m bench.enqueue
	$(BIN)/python -m bench.wakeup
	$(BIN)/python -m bench.notify
	$(BIN)/python -m bench.rss
	$(BIN)/python -m bench.limits
	$(BIN)/python -m bench.schedules

## bench-large: figures 6 and 9 (10,000,000-row tables; ~7 minutes, several GB of disk)
bench-large: $(STAMP)
	$(BIN)/python -m bench.large

## bench-soak: figure 7, a churn soak (SOAK_MINUTES, default 30)
SOAK_MINUTES ?= 30
bench-soak: $(STAMP)
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES)

## chaos: a bounded chaos run with a printed summary (CHAOS_SECONDS=300 for longer, CHAOS_SEED=n to replay)
CHAOS_SECONDS ?= 60
chaos: $(STAMP)
	CHAOS_SECONDS=$(CHAOS_SECONDS) $(BIN)/python -m pytest tests/chaos -s -p no:cacheprovider

## chaos-citus: the chaos run on a Citus cluster (coordinator + 2 worker nodes), worker nodes restarted and stopped (same knobs)
chaos-citus: $(STAMP)
	CHAOS_SECONDS=$(CHAOS_SECONDS) OPENQUEUE_TEST_BACKEND=citus $(BIN)/python -m pytest tests/citus/test_chaos_citus.py -k chaos_run -s -p no:cacheprovider

## sql: regenerate sql/openqueue.sql from sql/migrations/
sql: $(STAMP)
	$(BIN)/python -c 'import sys; from openqueue_py.migrate import main; sys.exit(main([]))'

## docs: regenerate docs/sql-reference.md from a fresh install's catalog (tests/test_docs.py checks it)
docs: $(STAMP)
	$(BIN)/python -m openqueue_py.docgen

## fmt: format the Python code
fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info
