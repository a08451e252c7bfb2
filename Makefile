# mediasvc — the two commands a newcomer needs: `make run` and `make test`.
# Everything Python comes from uv.lock (`make lock` refreshes it); uv itself is pinned with hashes
# in tools/uv-requirements.txt and installed into .uv/ from the machine's python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_DIR := .uv
UV := $(UV_DIR)/bin/uv
# uv uses this machine's python3, never one it downloads; trusts the machine's CA certificates,
# as pip and curl do (a site's own CA or TLS proxy then works); copies files (the cache may lie
# on another filesystem, where hard links fail with a warning).
export UV_PYTHON_DOWNLOADS := never
export UV_SYSTEM_CERTS := 1
export UV_LINK_MODE := copy
SYNC := $(UV) sync --frozen --python $(PYTHON)
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed

.PHONY: run test migrate lint typecheck services system-packages lock lock-check bench-loop clean \
	vendor-web

$(UV): tools/uv-requirements.txt
	test -x $(UV_DIR)/bin/python || $(PYTHON) -m venv $(UV_DIR)
	$(UV_DIR)/bin/pip install --quiet --require-hashes --no-deps -r tools/uv-requirements.txt
	touch $(UV)

# The service's own dependencies only. --inexact: keeps the test tools if they are there.
$(RUN_STAMP): $(UV) pyproject.toml uv.lock
	$(SYNC) --inexact
	touch $(RUN_STAMP)

# The service and the test tools (the `test` extra), exactly as locked.
$(TEST_STAMP): $(UV) pyproject.toml uv.lock
	$(SYNC) --extra test
	touch $(TEST_STAMP) $(RUN_STAMP)

# s3rver: a disk-backed S3 server for the tests' large objects (moto keeps objects in memory).
S3RVER := tests/s3rver/node_modules/.bin/s3rver
$(S3RVER): tests/s3rver/package.json tests/s3rver/package-lock.json
	npm ci --prefix tests/s3rver --no-audit --no-fund --loglevel=error
	touch $(S3RVER)

# tus-js-client under Node, for the resumable-upload tests (tests/test_tus_clients.py).
TUS_NODE := tests/tus-node/node_modules/tus-js-client/package.json
$(TUS_NODE): tests/tus-node/package.json tests/tus-node/package-lock.json
	npm ci --prefix tests/tus-node --no-audit --no-fund --loglevel=error
	touch $(TUS_NODE)
## Set up and run the service on its embedded defaults (SQLite under ./data, files in ./data/media).
## HOST and PORT choose the address: `make run PORT=8080`, `make run HOST=0.0.0.0`.
run:
	@bash scripts/system-packages run
	@$(MAKE) --no-print-directory $(RUN_STAMP)
	$(BIN)/mediasvc migrate
	$(BIN)/mediasvc serve --host $${HOST:-127.0.0.1} --port $${PORT:-8000}

migrate: $(RUN_STAMP)
	$(BIN)/mediasvc migrate

## Set up and pass the tests on a Debian machine: installs the missing Debian packages (as root;
## otherwise prints the apt-get line and stops), the venv from uv.lock, s3rver, starts PostgreSQL
## and Redis if stopped, then lint, types and pytest.
test:
	@bash scripts/system-packages test
	@$(MAKE) --no-print-directory lock-check $(TEST_STAMP) $(S3RVER) $(TUS_NODE) services
	$(BIN)/ruff check mediasvc tests
	$(BIN)/mypy
	$(BIN)/pytest

## Install the Debian packages the tests need (as root), or say which are missing.
system-packages:
	@bash scripts/system-packages test

## Start the local PostgreSQL and Redis if they are installed but stopped.
services:
	@bash scripts/services

## Fails when pyproject.toml and uv.lock disagree (run by `make test`).
lock-check: $(UV)
	$(UV) lock --check --python $(PYTHON)

## Refresh the lock: the newest versions pyproject.toml admits, and uv's own hashes.
lock: $(UV)
	$(UV) lock --upgrade --python $(PYTHON)
	$(UV) pip compile tools/uv-requirements.in --generate-hashes --python-version 3.11 --quiet \
	  --no-header -o tools/uv-requirements.txt

lint: $(TEST_STAMP)
	$(BIN)/ruff check mediasvc tests benchmarks
	$(BIN)/ruff format --check mediasvc tests

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

bench-loop: $(TEST_STAMP)
	$(BIN)/python benchmarks/loop_latency.py

## Refresh the web page's browser libraries (mediasvc/web/static/vendor/) from npm, at the exact
## versions of web-vendor/package-lock.json; the copies are committed (no npm needed to run).
vendor-web:
	bash scripts/vendor-web

clean:
	rm -rf $(VENV) $(UV_DIR) .pytest_cache .mypy_cache .ruff_cache

## Benchmarks: mediasvc against the machine's limits and its peers (nginx, FastAPI, Starlette),
## one table, results in benchmarks/results/. Installs nginx and the bench extras if missing,
## starts PostgreSQL/Redis if stopped. `bench`: 4 GiB, 3 rounds (< 30 min); `bench-quick`: 1 GiB,
## one round (a few minutes).
.PHONY: bench bench-quick bench-venv
bench-venv: $(TEST_STAMP)
	$(SYNC) --extra test --extra bench

bench: bench-venv $(S3RVER)
	$(BIN)/python benchmarks/run.py

bench-quick: bench-venv $(S3RVER)
	$(BIN)/python benchmarks/run.py --quick
