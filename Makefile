# mediasvc — the two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test migrate lint typecheck services bench-loop clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# s3rver: a disk-backed S3 server for the tests' large objects (moto keeps objects in memory).
S3RVER := tests/s3rver/node_modules/.bin/s3rver
$(S3RVER): tests/s3rver/package.json tests/s3rver/package-lock.json
	npm ci --prefix tests/s3rver --no-audit --no-fund --loglevel=error
	touch $(S3RVER)

## Set up and run the service on its embedded defaults (SQLite under ./data, files in ./data/media).
run: $(STAMP)
	$(BIN)/mediasvc migrate
	$(BIN)/mediasvc serve --host $${HOST:-127.0.0.1} --port $${PORT:-8000}

migrate: $(STAMP)
	$(BIN)/mediasvc migrate

## Set up and pass the tests (needs PostgreSQL on 127.0.0.1:5432; `make services` starts it).
test: $(STAMP) $(S3RVER) services
	$(BIN)/ruff check mediasvc tests
	$(BIN)/mypy
	$(BIN)/pytest

## Start the local PostgreSQL and Redis if they are installed but stopped.
services:
	@bash .ci/services

lint: $(STAMP)
	$(BIN)/ruff check mediasvc tests benchmarks
	$(BIN)/ruff format --check mediasvc tests

typecheck: $(STAMP)
	$(BIN)/mypy

bench-loop: $(STAMP)
	$(BIN)/python benchmarks/loop_latency.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

## Benchmarks: mediasvc against the machine's limits and its peers (nginx, FastAPI, Starlette),
## one table, results in benchmarks/results/. Installs nginx and the bench extras if missing,
## starts PostgreSQL/Redis if stopped. `bench`: 4 GiB, 3 rounds (< 30 min); `bench-quick`: 1 GiB,
## one round (a few minutes).
.PHONY: bench bench-quick
bench: $(STAMP) $(S3RVER)
	$(BIN)/python -c 'import locust, granian' 2>/dev/null || $(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/run.py

bench-quick: $(STAMP) $(S3RVER)
	$(BIN)/python -c 'import locust, granian' 2>/dev/null || $(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/run.py --quick
